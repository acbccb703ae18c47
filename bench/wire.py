"""Wire codec speed: the struct fast paths beside construct on the same bytes.

Each fast-path figure carries the construct figure for the same work as its
reference, so the ratio shows what the per-packet paths save.
"""

from collections.abc import Callable

from bench.common import Figure, rate
from edge.wire import hot
from edge.wire.codes import MsgType
from edge.wire.messages import Codec, Header, decode, encode

SECONDS = 0.5
"""Per measurement; seven measurements keep the whole run near four seconds."""


def _pair(name: str, fast: Figure, reference: Figure) -> Figure:
    return Figure(name, fast.rate, fast.unit, reference.name, reference.rate)


def _measure(name: str, fn: Callable[[], object]) -> Figure:
    return Figure(name, rate(fn, SECONDS), "msg/s")


def _header() -> Figure:
    data = encode(MsgType.KEEPALIVE, {"nonce": 1, "sent_ms": 2, "echo": True})
    slow = _measure("construct Header.parse", lambda: Header.parse(data))
    fast = _measure("header: hot.unpack_header", lambda: hot.unpack_header(data))
    return _pair(fast.name, fast, slow)


def _transport() -> Figure:
    data = hot.pack_transport(0x01020304, 123456, bytes(96))
    slow = _measure("construct decode", lambda: decode(data))
    fast = _measure("TRANSPORT: hot.unpack_transport", lambda: hot.unpack_transport(data))
    return _pair(fast.name, fast, slow)


def _media() -> Figure:
    data = hot.pack_media(0, Codec.OPUS, 0, 4242, 960 * 7, bytes(80))
    slow = _measure("construct decode", lambda: decode(data))
    fast = _measure("MEDIA_FRAME: hot.unpack_media", lambda: hot.unpack_media(data))
    return _pair(fast.name, fast, slow)


def _instant_message() -> Figure:
    body = {
        "message_id": bytes(range(16)),
        "sender": "alice@example",
        "recipient": "bob@example",
        "sequence": 17,
        "sent_ms": 1_700_000_000_000,
        "text": "Door opened at 08:15, parcel left at reception.",
    }
    data = encode(MsgType.INSTANT_MESSAGE, body)
    return _measure("INSTANT_MESSAGE: construct decode", lambda: decode(data))


def run() -> list[Figure]:
    """Measure and return the figures; prints nothing."""
    return [_header(), _transport(), _media(), _instant_message()]


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
