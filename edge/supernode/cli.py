"""``edge supernode --config FILE``: run a supernode until SIGTERM."""

import argparse
from pathlib import Path
from typing import Any

from edge.runtime.loop import run
from edge.supernode import config as supernode_config
from edge.supernode.service import serve


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "supernode", help="STUN, TURN relay, rendezvous and presence for other devices"
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    return run(serve(supernode_config.read(args.config)))
