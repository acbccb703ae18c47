"""The one command, ``edge``, with a sub-command per role."""

import argparse
import sys
from collections.abc import Sequence

from edge import __version__
from edge.errors import EdgeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="Open peer-to-peer voice and messaging for small Linux boards."
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from edge import ctl, demo, keytool
    from edge.client import cli as agent_cli
    from edge.device import update
    from edge.login import cli as login_cli
    from edge.provision import serialport
    from edge.supernode import cli as supernode_cli

    demo.add_parser(commands)
    keytool.add_parser(commands)
    login_cli.add_parser(commands)
    supernode_cli.add_parser(commands)
    agent_cli.add_parser(commands)
    ctl.add_parser(commands)
    update.add_parser(commands)
    serialport.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edge.runtime.logs import setup_logging

    setup_logging(args.log_level)
    try:
        code: int = args.run(args)
    except EdgeError as exc:
        print(f"edge {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
