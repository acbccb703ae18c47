"""The overlay's requests and replies to and from their wire bodies.

How it works: each dataclass of :mod:`edge.overlay.messages` maps one to one
onto a DHT_* message declared in :mod:`edge.wire.messages`, with a
``request_id`` beside it that the wire carries and the dataclasses do not (the
adapter pairs replies with requests by it). Ids and keys are 256-bit integers
here and 32 big-endian bytes on the wire.

:func:`to_wire` gives the type and the body to hand to
:func:`edge.wire.messages.encode`, which checks the caps (more than k contacts,
more than 8 records or a record over its size raise
:class:`~edge.wire.errors.CapExceeded`). :func:`from_wire` takes a decoded
:class:`~edge.wire.messages.Message`, whose fields the wire decoder has
already checked, so every DHT message converts; any other type is a routing
mistake of the caller (:class:`~edge.overlay.errors.OverlayMisuse`).
"""

from collections.abc import Callable
from typing import Any

from edge.overlay.errors import OverlayMisuse
from edge.overlay.ids import check_id, id_to_bytes
from edge.overlay.messages import (
    Contact,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Reply,
    Request,
    Stored,
    StoreRecord,
    Values,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message

OverlayMessage = Request | Reply
Body = dict[str, Any]

MAX_REQUEST_ID = 0xFFFFFFFF


def to_wire(request_id: int, msg: OverlayMessage) -> tuple[MsgType, Body]:
    """The message type and body of ``msg``, ready for :func:`edge.wire.messages.encode`.

    ``request_id`` is a u32: the caller picks it for a request and copies the
    request's into the reply. Raises :class:`OverlayMisuse` for an id out of
    range or something that is not an overlay message.
    """
    if isinstance(request_id, bool) or not isinstance(request_id, int):
        raise OverlayMisuse(f"a request id is an int, not {type(request_id).__name__}")
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise OverlayMisuse(f"a request id is a u32, not {request_id}")
    msg_type, body = _body(msg)
    return msg_type, {"request_id": request_id, **body}


def from_wire(message: Message) -> tuple[int, OverlayMessage]:
    """The request id and the overlay message a decoded DHT_* message carries.

    Raises :class:`OverlayMisuse` when ``message`` is not one of
    :data:`DHT_TYPES`, or its body is not what the wire decoder gives for it.
    """
    convert = _FROM_WIRE.get(message.type)
    if convert is None:
        raise OverlayMisuse(f"{message.type!r} is not an overlay message")
    try:
        request_id: int = message.body.request_id
        return request_id, convert(message.body)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise OverlayMisuse(f"{message.type.name}: not a decoded body ({exc})") from None


def _body(msg: OverlayMessage) -> tuple[MsgType, Body]:
    if isinstance(msg, Ping):
        return MsgType.DHT_PING, {}
    if isinstance(msg, Pong):
        return MsgType.DHT_PONG, {"load": msg.load}
    if isinstance(msg, FindNode):
        return MsgType.DHT_FIND_NODE, {"key": id_to_bytes(msg.key)}
    if isinstance(msg, FindValue):
        return MsgType.DHT_FIND_VALUE, {"key": id_to_bytes(msg.key)}
    if isinstance(msg, StoreRecord):
        return MsgType.DHT_STORE, {"key": id_to_bytes(msg.key), "record": msg.record}
    if isinstance(msg, Nodes):
        return MsgType.DHT_NODES, {"contacts": [_contact_body(c) for c in msg.contacts]}
    if isinstance(msg, Values):
        return MsgType.DHT_VALUES, {"records": list(msg.records)}
    if isinstance(msg, Stored):
        return MsgType.DHT_STORED, {"code": msg.code}
    raise OverlayMisuse(f"{type(msg).__name__} is not an overlay message")


def _contact_body(contact: Contact) -> Body:
    return {"node_id": id_to_bytes(contact.node_id), "address": contact.address}


def _id(raw: bytes) -> int:
    value = int.from_bytes(raw, "big")
    check_id(value)
    return value


def _contact(body: Any) -> Contact:
    host, port = body.address
    return Contact(_id(body.node_id), (host, port))


_FROM_WIRE: dict[MsgType, Callable[[Any], OverlayMessage]] = {
    MsgType.DHT_PING: lambda body: Ping(),
    MsgType.DHT_PONG: lambda body: Pong(body.load),
    MsgType.DHT_FIND_NODE: lambda body: FindNode(_id(body.key)),
    MsgType.DHT_FIND_VALUE: lambda body: FindValue(_id(body.key)),
    MsgType.DHT_STORE: lambda body: StoreRecord(_id(body.key), bytes(body.record)),
    MsgType.DHT_NODES: lambda body: Nodes(tuple(_contact(c) for c in body.contacts)),
    MsgType.DHT_VALUES: lambda body: Values(tuple(bytes(r) for r in body.records)),
    MsgType.DHT_STORED: lambda body: Stored(ErrorCode(body.code)),
}

DHT_TYPES: frozenset[MsgType] = frozenset(_FROM_WIRE)
"""The message types :func:`from_wire` converts; route only these to it."""
