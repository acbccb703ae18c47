"""``edge agent --config FILE``: run the device daemon until SIGTERM."""

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

from edge.client import config as agent_config
from edge.client.agent import Agent
from edge.client.config import AgentConfig
from edge.errors import LocalError
from edge.runtime import notify
from edge.runtime.loop import run

MAX_PASSWORD_FILE = 1024


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("agent", help="the device daemon (desk phone, intercom)")
    parser.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    parser.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    config = agent_config.read(args.config)
    return run(serve(config))


def read_password(config: AgentConfig) -> str | None:
    """The enrolment password from ``[account] password_file``, if one is named."""
    path = config.password_file
    if path is None:
        return None
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise LocalError(f"[account] password_file {path}: {exc.strerror}") from None
    if len(raw) > MAX_PASSWORD_FILE:
        raise LocalError(f"[account] password_file {path} is over {MAX_PASSWORD_FILE} bytes")
    return raw.decode("utf-8", "replace").rstrip("\r\n")


async def serve(config: AgentConfig) -> int:
    agent = Agent(config, password=read_password(config))
    await agent.start()
    watchdog = asyncio.create_task(notify.keep_watchdog())
    try:
        notify.ready()
        await asyncio.Event().wait()
    finally:
        notify.stopping()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        await asyncio.shield(agent.stop())
    return 0
