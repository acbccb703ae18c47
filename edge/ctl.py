"""``edge ctl``: one command to a running daemon over its control socket, JSON out.

Positional words after the command fill that command's arguments in the order
:data:`COMMANDS` lists them, so ``edge ctl send alice "hello"`` sends
``{"command": "send", "args": {"user": "alice", "text": "hello"}}``.

Exit status, for scripts: 0 the daemon did it (the result is printed), 1 the
daemon refused (its error object is printed), 2 the command line was wrong,
3 no daemon answered on the socket.
"""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from edge.errors import EdgeError
from edge.runtime.control import ControlUnreachable, error_answer, request

DEFAULT_SOCKET: Final = Path("/run/edge/agent.sock")
SOCKET_ENV: Final = "EDGE_CONTROL_SOCKET"

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

COMMANDS: Final[dict[str, tuple[str, ...]]] = {
    "status": (),
    "counters": (),
    "search": ("user",),
    "send": ("user", "text"),
    "messages": (),
    "call": ("user",),
    "answer": (),
    "hangup": (),
    "buddies": (),
    "buddy": ("op", "user"),
    "send-file": ("user", "path"),
    "files": (),
    "door": ("op",),
    "button": ("part", "action"),
}
"""Each command the daemons serve, with the names of its positional arguments."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "ctl",
        help="control a running agent or supernode",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        help=f"the daemon's control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    parser.add_argument("name", metavar="COMMAND", choices=sorted(COMMANDS))
    parser.add_argument("words", metavar="ARG", nargs="*")
    parser.set_defaults(run=_run)


def socket_path(given: Path | None) -> Path:
    if given is not None:
        return given
    from_env = os.environ.get(SOCKET_ENV)
    return Path(from_env) if from_env else DEFAULT_SOCKET


def arguments(name: str, words: list[str]) -> dict[str, str]:
    """The named arguments of ``name`` from its positional words; ValueError when they differ."""
    names = COMMANDS[name]
    if len(words) != len(names):
        wanted = " ".join(n.upper() for n in names) or "no arguments"
        raise ValueError(f"{name} takes {wanted}, got {len(words)} word(s)")
    return dict(zip(names, words, strict=True))


def _run(args: argparse.Namespace) -> int:
    try:
        named = arguments(args.name, args.words)
    except ValueError as exc:
        print(f"edge ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = socket_path(args.socket)
    try:
        answer = asyncio.run(request(path, args.name, named, timeout=args.timeout))
    except ControlUnreachable as exc:
        _print(error_answer(exc))
        return EXIT_UNREACHABLE
    except EdgeError as exc:
        _print(error_answer(exc))
        return EXIT_REFUSED
    if answer["ok"]:
        _print(answer.get("result", {}))
        return EXIT_OK
    _print(answer)
    return EXIT_REFUSED


def _print(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))
