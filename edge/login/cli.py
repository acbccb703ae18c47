"""``edge login-server``: run the server, and administer its accounts and devices.

Without an action it serves. Actions work on the same configuration and
database, and may run while the server does (several servers and the admin
commands can share one PostgreSQL database; SQLite allows it too, one writer
at a time). Passwords come from a prompt, or from standard input with
``--password-stdin``, never from the command line, where other users could
read them in the process list.
"""

import argparse
import asyncio
import getpass
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.crypto.errors import KeyFileError
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.errors import LocalError
from edge.login import config as login_config
from edge.login.config import LoginConfig
from edge.login.errors import StoreUsageError
from edge.login.passwords import Passwords
from edge.login.server import LoginServer, ServerKeys
from edge.login.store import Store
from edge.runtime import notify
from edge.runtime.config import parse_address
from edge.runtime.loop import run


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "login-server", help="accounts, certificates, buddy lists, mailbox (the one central part)"
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--listen", action="append", metavar="HOST:PORT", help="listen address (repeatable)"
    )
    parser.add_argument("--database", metavar="URL", help="sqlite:///FILE or postgresql://...")
    parser.add_argument("--state-dir", type=Path, help="keys and the default SQLite database")
    parser.set_defaults(run=_serve)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    user = actions.add_parser("user", help="accounts").add_subparsers(
        dest="user_action", required=True, metavar="ACTION"
    )
    for name, helptext, func in (
        ("add", "create an account", _user_add),
        ("passwd", "set an account's password", _user_passwd),
        ("disable", "refuse an account's logins", _user_disable),
        ("enable", "allow an account's logins again", _user_enable),
    ):
        sub = user.add_parser(name, help=helptext)
        sub.add_argument("user_id")
        if name in ("add", "passwd"):
            sub.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
        sub.set_defaults(run=func)
    user.add_parser("list", help="list accounts").set_defaults(run=_user_list)

    device = actions.add_parser("device", help="devices and their certificates").add_subparsers(
        dest="device_action", required=True, metavar="ACTION"
    )
    listing = device.add_parser("list", help="list devices")
    listing.add_argument("user_id", nargs="?")
    listing.set_defaults(run=_device_list)
    revoke = device.add_parser("revoke", help="revoke a device and its certificates")
    revoke.add_argument("user_id")
    revoke.add_argument("device_id")
    revoke.set_defaults(run=_device_revoke)

    keys = actions.add_parser("keys", help="print the public keys devices must pin and trust")
    keys.set_defaults(run=_keys)


# -- configuration, keys, store ------------------------------------------------------


def configuration(args: argparse.Namespace) -> LoginConfig:
    config = login_config.read(args.config)
    if args.listen:
        config = replace(config, listen=tuple(_parse_listen(text) for text in args.listen))
    if args.database:
        config = replace(config, database=args.database)
    if args.state_dir:
        config = replace(config, state_dir=args.state_dir)
    return config


def _parse_listen(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, any_port=True)
    except ValueError as exc:
        raise LocalError(f"--listen {text!r}: expected HOST:PORT ({exc})") from None


def server_keys(state_dir: Path) -> ServerKeys:
    """The server's keys, made on first start (mode 0600 in a 0700 state folder)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return ServerKeys(
        noise=_load_or_make(state_dir / "server.key", DeviceKeys),
        issuer=_load_or_make(state_dir / "issuer.key", IssuerKey),
    )


def _load_or_make(path: Path, kind: Any) -> Any:
    try:
        return kind.load(path)
    except KeyFileError:
        if path.exists():
            raise
    key = kind.generate()
    key.save(path)
    return key


def open_configured_store(config: LoginConfig) -> Store:
    from edge.login.stores import open_store

    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = open_store(config.database_url)
    store.migrate()
    return store


# -- serving -----------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    config = configuration(args)
    return run(serve(config))


async def serve(
    config: LoginConfig, started: "asyncio.Future[list[tuple[str, int]]] | None" = None
) -> int:
    store = await asyncio.to_thread(open_configured_store, config)
    server = LoginServer(config, store, server_keys(config.state_dir))
    try:
        bound = await server.start()
        if started is not None:
            started.set_result(bound)
        notify.ready()
        notify.status(f"serving on {', '.join(f'{h}:{p}' for h, p in bound)}")
        await asyncio.Event().wait()
    finally:
        notify.stopping()
        await asyncio.shield(server.stop())
        await asyncio.to_thread(store.close)
    return 0


# -- administration ------------------------------------------------------------------


def _with_store(args: argparse.Namespace) -> tuple[LoginConfig, Store]:
    config = configuration(args)
    return config, open_configured_store(config)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise LocalError("the two passwords differ")
    if not password:
        raise LocalError("empty password")
    return password


def _user_add(args: argparse.Namespace) -> int:
    config, store = _with_store(args)
    try:
        password_hash = Passwords(config.password_cost).hash(_read_password(args))
        store.add_user(args.user_id, password_hash, int(time.time()))
    except StoreUsageError as exc:
        raise LocalError(str(exc)) from None
    finally:
        store.close()
    print(f"added user {args.user_id}")
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    config, store = _with_store(args)
    try:
        store.set_password(args.user_id, Passwords(config.password_cost).hash(_read_password(args)))
    finally:
        store.close()
    print(f"password of {args.user_id} changed")
    return 0


def _user_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _user_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    _, store = _with_store(args)
    try:
        store.set_enabled(args.user_id, enabled)
    finally:
        store.close()
    print(f"{args.user_id} {'enabled' if enabled else 'disabled'}")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    try:
        after = ""
        while page := store.list_users(after, 1000):
            for user in page:
                state = "enabled" if user.enabled else "disabled"
                print(f"{user.user_id}\t{state}\tcreated {_date(user.created_at)}")
            after = page[-1].user_id
    finally:
        store.close()
    return 0


def _device_list(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    try:
        for device in store.list_devices(args.user_id):
            state = "revoked" if device.revoked else "active"
            print(
                f"{device.user_id}\t{device.device_id}\t{state}\t"
                f"last login {_date(device.last_login_at)}\tEd25519 {device.sign_key.hex()[:16]}"
            )
    finally:
        store.close()
    return 0


def _device_revoke(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    try:
        serials = store.revoke_device(args.user_id, args.device_id, int(time.time()))
    finally:
        store.close()
    print(
        f"revoked {args.user_id}/{args.device_id}: {len(serials)} unexpired certificate(s) "
        "on the revocation list"
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
    keys = server_keys(configuration(args).state_dir)
    print(f"server Noise key (devices pin it): {keys.noise.dh_public.hex()}")
    print(f"issuer key (devices and supernodes trust it): {keys.issuer.public.hex()}")
    return 0


def _date(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds)) if seconds else "never"
