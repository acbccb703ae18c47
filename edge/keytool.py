"""``edge keys``: make device and issuer keys, issue and show certificates.

Before a login server exists on a site, an operator can still issue
certificates by hand with a saved issuer key; the login server later does the
same through :func:`edge.crypto.cert.issue`.
"""

import argparse
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.crypto.cert import TrustStore, issue, read_certificate
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.errors import LocalError
from edge.runtime.config import write_atomic
from edge.wire.messages import parse_certificate


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("keys", help="make keys, issue and show certificates")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    device = sub.add_parser("device", help="generate a device's Ed25519 and X25519 keys")
    device.add_argument("--out", type=Path, required=True, help="key file to write (mode 0600)")
    device.set_defaults(run=_device)

    issuer = sub.add_parser("issuer", help="generate a certificate issuer key")
    issuer.add_argument("--out", type=Path, required=True, help="key file to write (mode 0600)")
    issuer.set_defaults(run=_issuer)

    certify = sub.add_parser("certify", help="issue a certificate for a device key")
    certify.add_argument("--issuer", type=Path, required=True, help="issuer key file")
    certify.add_argument("--device", type=Path, required=True, help="device key file")
    certify.add_argument("--user", required=True, help="user id")
    certify.add_argument("--device-id", required=True, help="device id")
    certify.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    certify.add_argument("--out", type=Path, required=True, help="certificate file to write")
    certify.set_defaults(run=_certify)

    show = sub.add_parser("show", help="print a certificate, and verify it when given the issuer")
    show.add_argument("cert", type=Path)
    show.add_argument("--issuer-public", help="issuer Ed25519 public key, hex")
    show.set_defaults(run=_show)


def _device(args: argparse.Namespace) -> int:
    keys = DeviceKeys.generate()
    keys.save(args.out)
    print(f"wrote {args.out}")
    print(f"  Ed25519 public {keys.sign_public.hex()}")
    print(f"  X25519 public  {keys.dh_public.hex()}")
    return 0


def _issuer(args: argparse.Namespace) -> int:
    key = IssuerKey.generate()
    key.save(args.out)
    print(f"wrote {args.out}")
    print(f"  Ed25519 public {key.public.hex()} (key id {key.key_id.hex()})")
    return 0


def _certify(args: argparse.Namespace) -> int:
    if not 0 < args.hours <= 24 * 366:
        raise LocalError("--hours must be more than 0 and at most a year")
    issuer = IssuerKey.load(args.issuer)
    device = DeviceKeys.load(args.device)
    raw = certify(issuer, device, args.user, args.device_id, int(args.hours * 3600))
    write_atomic(args.out, raw, mode=0o644)
    print(f"wrote {args.out}")
    print(describe(raw))
    return 0


def _show(args: argparse.Namespace) -> int:
    raw = read_certificate(args.cert)
    print(describe(raw))
    if args.issuer_public:
        try:
            public = bytes.fromhex(args.issuer_public)
        except ValueError:
            raise LocalError("--issuer-public is not hexadecimal") from None
        TrustStore([public]).verify(raw, time.time())
        print("  verified: signature, validity window")
    return 0


def certify(
    issuer: IssuerKey, device: DeviceKeys, user_id: str, device_id: str, seconds: int
) -> bytes:
    """A certificate from now (less a minute for clock skew) for ``seconds``, random serial."""
    now = int(time.time())
    return issue(
        issuer,
        serial=secrets.randbits(63),
        user_id=user_id,
        device_id=device_id,
        sign_key=device.sign_public,
        dh_key=device.dh_public,
        not_before=now - 60,
        not_after=now + seconds,
    )


def describe(raw: bytes) -> str:
    """A certificate in plain words, without verifying it."""
    tbs = parse_certificate(raw).tbs
    return "\n".join(
        [
            f"  certificate serial {tbs.serial} for {tbs.user_id}/{tbs.device_id}",
            f"  Ed25519 {bytes(tbs.sign_key).hex()}",
            f"  X25519  {bytes(tbs.dh_key).hex()}",
            f"  valid {_utc(tbs.not_before)} to {_utc(tbs.not_after)}",
            f"  issuer key id {bytes(tbs.issuer_key_id).hex()}",
        ]
    )


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
