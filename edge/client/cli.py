"""``edge agent --config FILE``: run the device daemon until SIGTERM."""

import argparse
import asyncio
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
    helpers = [
        asyncio.create_task(notify.keep_watchdog()),
        asyncio.create_task(report_where(agent)),
    ]
    try:
        notify.ready()
        await asyncio.Event().wait()
    finally:
        notify.stopping()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await asyncio.shield(agent.stop())
    return 0


async def report_where(agent: Agent) -> None:
    """Keep the service manager's status line saying where the agent is online.

    ``STATUS=online via HOST:PORT over TRANSPORT`` once it is attached with its
    presence stored, and again each time that changes (``STATUS=offline: ...``
    while it looks for a supernode). ``systemctl status`` shows it; ``edge demo``
    waits for it.
    """
    told: str | None = None
    while True:
        told = await _where_next(agent, told)
        if told is not None:
            notify.status(f"online via {told}")
        else:
            notify.status(f"offline: {agent.last_error or 'looking for a supernode'}")


async def _where_next(agent: Agent, told: str | None) -> str | None:
    """Where the agent is online (None: nowhere) once that differs from ``told``."""
    await agent.wait_for(lambda: _where(agent) != told)
    return _where(agent)


def _where(agent: Agent) -> str | None:
    link = agent.link
    if not agent.online.is_set() or link is None:
        return None
    return link.where
