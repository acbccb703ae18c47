"""Every edge message, declared once with construct; encode() and decode() over them.

How it works: a message is an 8-byte big-endian header (magic, version, type,
flags, body length) followed by the body that the type selects. Each body is a
construct ``Struct`` of named, documented, capped fields (see
:mod:`edge.wire.fields`), registered with its description and spec reference
in :data:`SPECS`; :data:`BODIES` is the same table reduced to declarations and
is the single source of truth that docs/PROTOCOL.md is generated from. One
field kind is declared here rather than there, :class:`SerialSet`, the sorted
u64 set that revocation lists carry.

:func:`decode` reads the header with one ``struct`` call and checks it in a
fixed order, before the body is touched: at least 8 bytes (Truncated), magic
(BadMagic), version (UnsupportedVersion), type (UnknownType), the length
against the type's largest possible body (Oversized), the length against the
bytes present (Truncated if fewer, Malformed if more). Only then is the body
parsed, and it must consume exactly ``length`` bytes. Every exception construct
or the standard library could raise on the way is turned into a
:class:`~edge.wire.errors.WireError` naming the message type and field.

The encoding is canonical: every value has exactly one encoding, so a decoded
message re-encodes to the same bytes (reserved header flag bits aside, which
are dropped on receipt). Signature checks rely on this: a certificate or a
presence record can be rebuilt from its parsed form to get the signed bytes.

Construct's compiled parsers are never used: its own documentation warns they
do not check untrusted input.
"""

import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar

from construct import (
    Bytes,
    Const,
    Construct,
    ConstructError,
    Container,
    FixedSized,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Struct,
    Switch,
    this,
)

from edge.wire.codes import MAGIC, PROTOCOL_VERSION, ErrorCode, MsgType, NoisePattern
from edge.wire.errors import (
    BadMagic,
    BuildError,
    CapExceeded,
    Malformed,
    Oversized,
    Truncated,
    UnknownType,
    UnsupportedVersion,
)
from edge.wire.fields import (
    Address,
    Array,
    Blob,
    Bool8,
    Bounded,
    EnumField,
    Id16,
    Key32,
    Millis,
    OptionalAddress,
    Rest,
    Signature64,
    Text,
    field_name,
    size_range,
)

HEADER_SIZE = 8
MAX_MESSAGE = 0xFFFF
"""Largest whole message (header and body): what a u16 length-prefixed frame can carry."""

MAX_BODY = MAX_MESSAGE - HEADER_SIZE
"""Largest body of any type; a header announcing more is Oversized whatever its type."""

USER_ID_MAX = 64
DEVICE_ID_MAX = 64
DISPLAY_NAME_MAX = 64
DETAIL_MAX = 200
CERTIFICATE_MAX = 512
BUDDY_ENTRIES_MAX = 128
"""Buddies per BUDDY_LIST message; a longer list takes several messages."""
NOISE_MAX = 1024
MEDIA_PAYLOAD_MAX = 1200
FILE_CHUNK_MAX = 16384
PASSWORD_MAX = 256
REVOKED_SERIALS_MAX = 4096
"""Serials in one revocation list: 4096 x 8 bytes keeps the whole message near 32 KiB."""

SEALED_MAX = 16384
"""Bytes of one sealed mailbox item, ciphertext and the sealed box's 48 bytes included."""

DEVICE_CERTIFICATES_MAX = 16
"""Devices of one user whose certificates one DEVICE_KEYS answer can carry."""

MAILBOX_ACK_MAX = 32
DHT_CONTACTS_MAX = 20
"""Contacts per DHT_NODES: Kademlia's k, the size of a bucket and of a lookup's answer."""

DHT_RECORDS_MAX = 8
"""Records per DHT_VALUES: the slots one key holds (one per device of a user)."""

RELAY_USERNAME_MAX = 128
RELAY_PASSWORD_MAX = 64
TRANSPORT_FIXED = 12
"""receiver_index and counter: the TRANSPORT body bytes before the ciphertext."""

MEDIA_FIXED = 9
"""stream_id, codec, flags, sequence, timestamp: the MEDIA_FRAME bytes before the payload."""


class HeaderFlag(IntFlag):
    """Bits of the header's ``flags`` field; the rest are reserved (sent 0, ignored)."""

    ACK_REQUESTED = 0x0001
    """The sender wants a receipt for this message."""


KNOWN_FLAGS = int(HeaderFlag.ACK_REQUESTED)


class MediaFlag(IntFlag):
    """Bits of a MEDIA_FRAME's ``flags``; the rest are reserved (sent 0, ignored)."""

    REDUNDANCY = 0x01
    """The payload also carries copies of earlier frames (edge/media/redundancy.py: a
    block in the Opus packet's padding, RFC 6716 §3.2.5, which any Opus decoder skips)."""

    MARKER = 0x02
    """First frame of a talkspurt, as the RTP marker bit (RFC 3550 §5.1)."""


class BuddyOp(IntEnum):
    """What a BUDDY_OP asks the login server to do with one buddy."""

    ADD_REQUEST = 1
    ACCEPT = 2
    DENY = 3
    REMOVE = 4
    BLOCK = 5
    UNBLOCK = 6


class BuddyState(IntEnum):
    """Where one entry of a buddy list stands."""

    PENDING_OUT = 1
    PENDING_IN = 2
    ACCEPTED = 3
    BLOCKED = 4
    REMOVED = 5


class CandidateKind(IntEnum):
    """How a candidate address was learned (RFC 8445 §5.1.1)."""

    HOST = 1
    SERVER_REFLEXIVE = 2
    PEER_REFLEXIVE = 3
    RELAY = 4


class Transport(IntEnum):
    """The transport protocol a candidate or path uses."""

    UDP = 1
    TCP = 2


class Codec(IntEnum):
    """Audio codecs: Opus (RFC 6716) and G.711 mu-law / A-law (ITU-T G.711)."""

    OPUS = 1
    PCMU = 2
    PCMA = 3


class CallEndReason(IntEnum):
    """Why a call was refused or ended."""

    NORMAL = 1
    BUSY = 2
    DECLINED = 3
    NO_ANSWER = 4
    UNREACHABLE = 5
    FAILED = 6
    CANCELLED = 7


class PathKind(IntEnum):
    """The kind of path a call's media currently takes."""

    DIRECT_UDP = 1
    PUNCHED_UDP = 2
    DIRECT_TCP = 3
    RELAY_UDP = 4
    RELAY_TCP = 5


class ReceiptStatus(IntEnum):
    """What became of an instant message."""

    DELIVERED = 1
    READ = 2
    STORED_OFFLINE = 3
    REJECTED = 4


class DeviceAction(IntEnum):
    """What a DEVICE_COMMAND asks the peer's hardware to do."""

    OPEN_DOOR = 1


class MailKind(IntEnum):
    """What a sealed mailbox item holds, in clear so the recipient can sort before opening."""

    MESSAGE = 1
    VOICEMAIL = 2
    RECEIPT = 3


_U16 = struct.Struct(">H")


def _read_exactly(stream: io.BufferedIOBase, size: int, path: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise Malformed(f"{field_name(path)}: body ends {size - len(data)} bytes short")
    return data


def _check_increasing(items: Sequence[int], path: str, error: type[Exception]) -> None:
    for i in range(1, len(items)):
        if items[i] <= items[i - 1]:
            raise error(
                f"{field_name(path)}[{i}]: {items[i]} after {items[i - 1]}; "
                "values must be strictly increasing"
            )


class SerialSet(Construct):  # type: ignore[misc]
    """A set of u64 numbers: a u16 count, then the numbers in strictly increasing order.

    Strict order gives every set exactly one encoding, which signed structures
    need (the signature covers these bytes), and makes a duplicate visible
    without a second pass. On parse the count is checked against the cap before
    any number is read (Oversized), and a number not above the one before it is
    Malformed. On build the caller must hand the numbers already sorted and
    without duplicates (BuildError otherwise), so that a signer signs exactly
    what it was given; more than the cap is CapExceeded. Parses to a list.
    """

    wire_doc: ClassVar[str] = (
        "A u16 count, then that many u64 in strictly increasing order; a count over the "
        "cap is OVERSIZED, a value not above the one before it MALFORMED."
    )

    def __init__(self, max_items: int) -> None:
        super().__init__()
        if not 0 <= max_items <= 0xFFFF:
            raise BuildError(f"a set cap of {max_items} does not fit a u16 count")
        self.max_items = max_items

    def _parse(self, stream: io.BufferedIOBase, context: Any, path: str) -> list[int]:
        count: int = _U16.unpack(_read_exactly(stream, _U16.size, path))[0]
        if count > self.max_items:
            raise Oversized(f"{field_name(path)}: {count} items, cap {self.max_items}")
        items = list(struct.unpack(f">{count}Q", _read_exactly(stream, 8 * count, path)))
        _check_increasing(items, path, Malformed)
        return items

    def _build(self, obj: object, stream: io.BufferedIOBase, context: Any, path: str) -> object:
        if not isinstance(obj, Sequence) or isinstance(obj, str | bytes | bytearray):
            raise BuildError(f"{field_name(path)}: expected a list, got {type(obj).__name__}")
        if len(obj) > self.max_items:
            raise CapExceeded(f"{field_name(path)}: {len(obj)} items, cap {self.max_items}")
        for i, item in enumerate(obj):
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 1 << 64:
                raise BuildError(f"{field_name(path)}[{i}]: {item!r} is not a u64")
        _check_increasing(obj, path, BuildError)
        stream.write(_U16.pack(len(obj)) + struct.pack(f">{len(obj)}Q", *obj))
        return obj

    def size_range(self) -> tuple[int, int]:
        return _U16.size, _U16.size + 8 * self.max_items

    def label(self) -> str:
        return "u64 set (u16 count, strictly increasing)"


# Field kinds shared by many bodies.
UserId = Text(USER_ID_MAX)
Detail = Text(DETAIL_MAX)
CertificateBlob = Blob(CERTIFICATE_MAX)
NoiseBlob = Blob(NOISE_MAX)
SessionIndex = Int32ub


# ---------------------------------------------------------------- shared structures

CertificateTBS = Struct(
    "version" / Const(1, Int8ub) * "certificate format version; always 1",
    "serial" / Int64ub * "issuer-assigned serial number, unique per issuer key",
    "user_id" / UserId * "the account the keys belong to",
    "device_id" / Text(DEVICE_ID_MAX) * "the device within the account",
    "sign_key" / Key32 * "the device's Ed25519 public key (RFC 8032)",
    "dh_key" / Key32 * "the device's X25519 public key (RFC 7748), its Noise static key",
    "not_before" / Int64ub * "start of validity, Unix seconds",
    "not_after" / Int64ub * "end of validity, Unix seconds",
    "issuer_key_id" / Bytes(8) * "names the login-server key that signed the certificate",
)

Certificate = Struct(
    "tbs" / CertificateTBS * "the signed part",
    "signature" / Signature64 * "issuer's Ed25519 signature over the encoded tbs bytes",
)

HandshakePayload = Struct(
    "certificate" / CertificateBlob * "the sender's certificate, exact signed bytes; may be empty",
    "timestamp_ms" / Millis * "sender's clock when it made the message; stale ones are refused",
    "features" / Int32ub * "feature bits; none defined yet: send 0, ignore unknown bits",
)

Candidate = Struct(
    "kind" / EnumField(CandidateKind) * "how the address was learned",
    "transport" / EnumField(Transport) * "UDP or TCP",
    "priority" / Int32ub * "RFC 8445 §5.1.2: 2^24 type preference + 2^8 local preference + 255",
    "foundation" / Int32ub * "RFC 8445 §5.1.1.3: equal for same kind, base and server",
    "address" / Address * "the candidate's transport address",
    "related" / OptionalAddress * "base of a reflexive or relayed candidate; none for host",
)

PRESENCE_FINDABLE = 72 * 3600
"""Seconds a device stays findable after its last publish: the seed's 72 hours."""

PRESENCE_MARGIN = 3600
"""Seconds of slack on top, for clocks that disagree and lookups started near the end."""

PRESENCE_LIFETIME_MAX = PRESENCE_FINDABLE + PRESENCE_MARGIN
"""The longest a SignedPresence may live: ``expires - issued_at`` at most this."""

REVOCATION_RETENTION = PRESENCE_LIFETIME_MAX + PRESENCE_MARGIN
"""Seconds a revoked serial stays on its issuer's revocation lists after the certificate's
not_after.

A presence record is checked against its certificate at the record's issued_at,
which may be as late as not_after, and is found until issued_at +
PRESENCE_LIFETIME_MAX; revocation is checked against the holder's current list.
So the serial must stay listed for as long as a record signed under the
certificate can be found, or a revoked device's last record would become valid
again when its serial left the list. The margin covers the clock skew holders
allow at both ends of that time."""

PRESENCE_CANDIDATES_MAX = 16
PRESENCE_CONTEXT = b"edge presence v1\x00"
"""Prefixed to the PresenceTBS bytes before signing, so that no other signed edge
structure (a certificate, a revocation list) can be passed off as a presence record."""

PresenceCandidate = Struct(
    "kind" / EnumField(CandidateKind) * "host, server-reflexive or relayed",
    "transport" / EnumField(Transport) * "UDP or TCP",
    "priority" / Int32ub * "RFC 8445 §5.1.2: higher is tried first",
    "address" / Address * "the candidate's transport address",
)

PresenceTBS = Struct(
    "version" / Const(1, Int8ub) * "presence format version; always 1",
    "user_id" / UserId * "whose presence this is; must be the certificate's user",
    "certificate"
    / Blob(size_range(Certificate)[1])
    * "the publishing device's certificate, exact signed bytes",
    "sequence" / Int64ub * "grows with each publish by this device; a higher one replaces a lower",
    "issued_at" / Int64ub * "when the device signed the record, Unix seconds",
    "online_until" / Int64ub * "online until then, Unix seconds; after it, last seen at issued_at",
    "expires"
    / Int64ub
    * f"findable until then, Unix seconds; at most issued_at + {PRESENCE_LIFETIME_MAX}",
    "supernode" / Address * "the supernode the device is attached to",
    "supernode_key" / Key32 * "that supernode's Noise static public key (X25519)",
    "candidates"
    / Array(PRESENCE_CANDIDATES_MAX, PresenceCandidate)
    * "addresses the device can be reached on, best first",
)

SignedPresence = Struct(
    "tbs" / PresenceTBS * "the signed part",
    "signature"
    / Signature64
    * "Ed25519 by the certificate's sign_key over the context string and the tbs bytes",
)

SIGNED_PRESENCE_MAX = size_range(SignedPresence)[1]
"""Bytes of the largest SignedPresence."""

DHT_RECORD_MAX = SIGNED_PRESENCE_MAX
"""Bytes of one record the overlay stores (DHT_STORE, DHT_VALUES): a SignedPresence."""

DhtId = Bytes(32)
"""A 256-bit overlay node id or key, big-endian (Kademlia §2.1, with 256 bits for 160)."""

NodeContact = Struct(
    "node_id" / DhtId * "the node's id: BLAKE2b-256 of its Noise static public key",
    "address" / Address * "where the node takes overlay traffic",
)

RevocationList = Struct(
    "issuer_key_id" / Bytes(8) * "the login-server key that signs the list (and the certificates)",
    "version" / Int64ub * "grows with every revocation; a higher version replaces a lower",
    "issued_at" / Int64ub * "when the list was signed, Unix seconds",
    "next_update" / Int64ub * "a fresher list is due by then, Unix seconds; after it, stale",
    "serials"
    / SerialSet(REVOKED_SERIALS_MAX)
    * f"serials of this issuer's revoked certificates, each until {REVOCATION_RETENTION} s "
    "after the certificate's not_after",
)

SignedRevocationList = Struct(
    "revocations" / RevocationList * "the signed part",
    "signature" / Signature64 * "issuer's Ed25519 signature over the encoded RevocationList bytes",
)


# ---------------------------------------------------------------- dial-back (promotion)

DIALBACK_CONTEXT = b"edge dialback v1\x00"
"""Prefixed to the DialbackTBS bytes before signing, so that no other signed edge
structure (a certificate, a presence record) can be passed off as an attestation."""

DIALBACK_NONCE_SIZE = 16

DialbackTBS = Struct(
    "version" / Const(1, Int8ub) * "attestation format version; always 1",
    "user_id" / UserId * "the client that was dialled back",
    "device_id" / Text(DEVICE_ID_MAX) * "the client's device",
    "observed"
    / Address
    * "where the probe was sent and confirmed: the IP the client's session came from, and "
    "the listening port the client named",
    "supernode"
    / Address
    * "the attesting supernode's public address, where the client's session reached it",
    "issued_at" / Int64ub * "when the supernode signed, Unix seconds",
    "certificate" / CertificateBlob * "the attesting supernode's certificate, exact signed bytes",
)

DialbackAttestation = Struct(
    "tbs" / DialbackTBS * "the signed part",
    "signature"
    / Signature64
    * "Ed25519 by the certificate's sign_key over the context string and the tbs bytes",
)

DIALBACK_ATTESTATION_MAX = size_range(DialbackAttestation)[1]
"""Bytes of the largest DialbackAttestation."""


@dataclass(frozen=True)
class StructureSpec:
    """A structure carried inside messages (or inside Noise payloads), for the document."""

    name: str
    layout: Any
    reference: str
    description: str


STRUCTURES: tuple[StructureSpec, ...] = (
    StructureSpec(
        "Certificate",
        Certificate,
        "RFC 8032 §5.1.6 (Ed25519 signature)",
        "A login server's statement that a user's device holds these two public keys, "
        "valid for a while. It travels as a u16-prefixed blob holding the exact signed "
        "bytes; the signature covers the encoded CertificateTBS, the bytes before it.",
    ),
    StructureSpec(
        "CertificateTBS",
        CertificateTBS,
        "RFC 8032 (Ed25519 keys), RFC 7748 (X25519 keys)",
        "The to-be-signed part of a Certificate.",
    ),
    StructureSpec(
        "HandshakePayload",
        HandshakePayload,
        "Noise rev 34 §7.7 (payload security properties)",
        "The plaintext each side puts inside its Noise handshake message that carries "
        "its static key (HANDSHAKE_RESP and HANDSHAKE_FINISH): the certificate binding "
        "that static key to a user, and the time, so that old handshakes cannot be replayed.",
    ),
    StructureSpec(
        "SignedPresence",
        SignedPresence,
        "RFC 8032 §5.1.6 (Ed25519 signature); Kademlia (Maymounkov and Mazieres, 2002) §2.5",
        "The presence record the overlay stores under a user's key (DHT_STORE, DHT_VALUES): "
        "a PresenceTBS and the device's signature over "
        f'the ASCII text "{PRESENCE_CONTEXT[:-1].decode("ascii")}", a zero byte, then '
        "the PresenceTBS bytes. It travels as those bytes verbatim. A holder accepts it only "
        "when the certificate verifies as it stood at issued_at (trusted issuer, signature, "
        "issued_at within its validity window) and is not revoked now, is for the user whose "
        "key it is stored under, the signature verifies with the certificate's sign_key, "
        "issued_at is not ahead of the holder's clock (beyond the certificate clock skew), "
        "online_until lies from issued_at to expires, expires has not passed and is at most "
        f"{PRESENCE_LIFETIME_MAX} s ({PRESENCE_FINDABLE // 3600} h and "
        f"{PRESENCE_MARGIN // 3600} h of margin) after issued_at, so a device that published "
        "within the last 72 hours is found even if it has been offline since and its "
        "certificate has expired since (issuers keep revoked serials listed for "
        f"{REVOCATION_RETENTION} s after not_after, see RevocationList). Each device "
        "fills its own slot of the key; a higher sequence replaces a lower one, an older "
        "one is refused as a replay.",
    ),
    StructureSpec(
        "PresenceTBS",
        PresenceTBS,
        "RFC 8445 §5.1.1 (candidates); Noise rev 34 §7 (the static key)",
        "The signed part of a SignedPresence: who, with which certificate, which version, "
        "when, and where the device can be reached.",
    ),
    StructureSpec(
        "PresenceCandidate",
        PresenceCandidate,
        "RFC 8445 §5.1.1 (gathering), §5.1.2 (priority)",
        "One address in a presence record. Shorter than a Candidate: the foundation and "
        "related address matter only to the connectivity checks, which CALL_INVITE and "
        "CALL_ACCEPT carry in full.",
    ),
    StructureSpec(
        "NodeContact",
        NodeContact,
        "Kademlia (Maymounkov and Mazieres, 2002) §2.2 (the <IP address, port, node id> triple)",
        "A supernode as the overlay knows it: what k-buckets hold and DHT_NODES carries. "
        "The id is not checked against the address here: a node proves its id when a "
        "session with it completes, since the id is the hash of its static key.",
    ),
    StructureSpec(
        "RevocationList",
        RevocationList,
        "RFC 5280 §5 (the idea of a CRL: issuer, thisUpdate, nextUpdate, revoked serials)",
        "The serials a login-server key has revoked. Like an X.509 CRL it names its issuer "
        "and says when the next one is due, so a receiver can tell an old list from a "
        "current one; unlike one, it lists only serials, since edge certificates are short-lived "
        f"and a serial leaves the list {REVOCATION_RETENTION} s after its certificate has expired: "
        "as long as a presence record signed while the certificate was valid may still be found "
        f"({PRESENCE_LIFETIME_MAX} s after its issued_at), and {PRESENCE_MARGIN} s of margin for "
        "clocks that disagree.",
    ),
    StructureSpec(
        "SignedRevocationList",
        SignedRevocationList,
        "RFC 8032 §5.1.6 (Ed25519 signature)",
        "A RevocationList with the issuer's signature over the list's encoded bytes, so "
        "supernodes and devices can pass it on unchanged and nobody can forge or shorten it.",
    ),
    StructureSpec(
        "Candidate",
        Candidate,
        "RFC 8445 §5.1.1 (gathering), §5.1.2 (priority); RFC 8839 §5.1 (related address)",
        "One transport address at which a device may receive media, as ICE defines it.",
    ),
    StructureSpec(
        "DialbackAttestation",
        DialbackAttestation,
        "RFC 8032 §5.1.6 (Ed25519 signature)",
        "A supernode's signed statement that it dialled a client back: a probe sent to the "
        "observed address from a fresh UDP socket of the supernode (not the one the client's "
        "session talks to) arrived, and the client proved it by returning the probe's nonce "
        "inside its session. "
        "The signature is over "
        f'the ASCII text "{DIALBACK_CONTEXT[:-1].decode("ascii")}", a zero byte, then the '
        "DialbackTBS bytes; the structure travels as those bytes verbatim. It carries the "
        "supernode's certificate, so anyone trusting the issuer can check it without asking "
        "the supernode. A client collects such attestations from supernodes on different IP "
        "addresses (three by default) and shows them when it asks to serve as a supernode: "
        "reachability verified by others, not self-reported. A verifier accepts one when the "
        "certificate verifies as it stood at issued_at, the signature verifies with its "
        "sign_key, it names the client asking, and issued_at is recent (24 h by default).",
    ),
    StructureSpec(
        "DialbackTBS",
        DialbackTBS,
        "RFC 8032 (Ed25519 keys)",
        "The signed part of a DialbackAttestation: who was reached, at which address, by "
        "which supernode, when.",
    ),
)


# ---------------------------------------------------------------- message bodies


@dataclass(frozen=True)
class MessageSpec:
    """One message type: its body declaration, spec reference and description."""

    type: MsgType
    body: Any
    reference: str
    description: str


HANDSHAKE_INIT = MessageSpec(
    MsgType.HANDSHAKE_INIT,
    Struct(
        "pattern" / EnumField(NoisePattern) * "XX on first contact, IK when the peer key is known",
        "sender_index" / SessionIndex * "initiator's index for this session, chosen at random",
        "cookie" / Id16 * "cookie from a COOKIE_REPLY, or 16 zero bytes",
        "noise" / NoiseBlob * "Noise message 1 (XX: -> e; IK: -> e, es, s, ss)",
    ),
    "Noise rev 34 §7.5 (XX and IK, message 1); cookie as in WireGuard §5.4.7",
    "Opens a session. The responder echoes sender_index so the initiator finds the "
    "session again. A responder under load may answer COOKIE_REPLY instead; the "
    "initiator then sends this message again with that cookie.",
)

HANDSHAKE_RESP = MessageSpec(
    MsgType.HANDSHAKE_RESP,
    Struct(
        "sender_index" / SessionIndex * "responder's index for this session",
        "receiver_index" / SessionIndex * "the initiator's sender_index",
        "noise" / NoiseBlob * "Noise message 2 (XX: <- e, ee, s, es; IK: <- e, ee, se)",
    ),
    "Noise rev 34 §7.5 (XX and IK, message 2)",
    "The responder's half of the handshake, with its HandshakePayload (certificate) "
    "encrypted inside. For IK this completes the handshake.",
)

HANDSHAKE_FINISH = MessageSpec(
    MsgType.HANDSHAKE_FINISH,
    Struct(
        "receiver_index" / SessionIndex * "the responder's sender_index",
        "noise" / NoiseBlob * "Noise XX message 3 (-> s, se) with a HandshakePayload",
    ),
    "Noise rev 34 §7.5 (XX, message 3)",
    "XX only: the initiator's static key and certificate. After it both sides hold "
    "transport keys and speak TRANSPORT.",
)

COOKIE_REPLY = MessageSpec(
    MsgType.COOKIE_REPLY,
    Struct(
        "receiver_index" / SessionIndex * "the initiator's sender_index",
        "cookie" / Id16 * "to be echoed in a repeated HANDSHAKE_INIT",
    ),
    "WireGuard whitepaper §5.4.7 (cookie reply under load)",
    "Sent instead of HANDSHAKE_RESP by a responder under load, so that it spends no "
    "public-key work on initiators that cannot receive at their claimed address.",
)

TRANSPORT = MessageSpec(
    MsgType.TRANSPORT,
    Struct(
        "receiver_index" / SessionIndex * "the receiver's index for the session",
        "counter" / Int64ub * "AEAD nonce; the receiver drops repeats with a replay window",
        "ciphertext" / Rest(MAX_BODY - TRANSPORT_FIXED) * "a whole edge message, encrypted",
    ),
    "Noise rev 34 §5.1 (CipherState), §11.4 (out-of-order transport messages)",
    "Everything after the handshake. The plaintext inside the ciphertext is itself a "
    "whole edge message, header and body. The counter travels in clear so datagrams "
    "may arrive out of order or not at all.",
)

LOGIN_HELLO = MessageSpec(
    MsgType.LOGIN_HELLO,
    Struct(
        "user_id" / UserId * "the account logging in",
        "device_id" / Text(DEVICE_ID_MAX) * "this device within the account",
        "sign_key" / Key32 * "the device's Ed25519 public key",
        "dh_key" / Key32 * "the device's X25519 public key",
        "client_version" / Text(32) * "software version, for the operator's logs",
    ),
    "RFC 8032 (Ed25519), RFC 7748 (X25519)",
    "First message a device sends to the login server, inside a Noise session: who it "
    "is and which keys it wants certified. The server answers LOGIN_CHALLENGE.",
)

LOGIN_CHALLENGE = MessageSpec(
    MsgType.LOGIN_CHALLENGE,
    Struct(
        "nonce" / Key32 * "fresh random bytes the device must sign",
        "server_time_ms" / Millis * "the server's clock, for devices without a real-time clock",
    ),
    "RFC 8032 §5.1.6 (what the device signs with)",
    "The login server's challenge. A known device answers LOGIN_DEVICE_PROOF; a device "
    "enrolling for the first time answers LOGIN_PASSWORD.",
)

LOGIN_PASSWORD = MessageSpec(
    MsgType.LOGIN_PASSWORD,
    Struct("password" / Text(PASSWORD_MAX) * "the account password"),
    "RFC 9106 (argon2id, how the server stores what it checks against)",
    "Enrolment only: the account password, sent once and only inside the encrypted "
    "Noise session with the login server.",
)

LOGIN_DEVICE_PROOF = MessageSpec(
    MsgType.LOGIN_DEVICE_PROOF,
    Struct("signature" / Signature64 * "Ed25519 by the device's sign_key over the challenge"),
    "RFC 8032 §5.1.6 (Ed25519 signing)",
    "Proves that the device holds the private half of the sign_key it presented.",
)

LOGIN_RESULT = MessageSpec(
    MsgType.LOGIN_RESULT,
    Struct(
        "status" / EnumField(ErrorCode, 2, accept_unknown=True) * "OK, or why login failed",
        "certificate" / CertificateBlob * "the device's new certificate; empty on failure",
        "detail" / Detail * "human-readable detail, for logs",
    ),
    "edge login (no external spec)",
    "The outcome of a login. On OK the device now holds a certificate to put in its "
    "handshakes and presence records.",
)

CERTIFICATE = MessageSpec(
    MsgType.CERTIFICATE,
    Struct("certificate" / CertificateBlob * "a certificate, exact signed bytes"),
    "RFC 8032 §5.1.6 (Ed25519 signature)",
    "A certificate on its own: a renewal pushed by the login server, or an answer to a "
    "peer that needs it.",
)

LOGIN_REGISTER = MessageSpec(
    MsgType.LOGIN_REGISTER,
    Struct("password" / Text(PASSWORD_MAX) * "the password the new account will have"),
    "RFC 9106 (argon2id, how the server stores it)",
    "Self-registration: sent instead of LOGIN_PASSWORD, in answer to LOGIN_CHALLENGE, when "
    "the account named in LOGIN_HELLO does not exist yet. The server creates the account "
    "with this password and enrols the device, and answers LOGIN_RESULT. Only ever inside "
    "the encrypted Noise session with the login server.",
)

REVOCATION_FETCH = MessageSpec(
    MsgType.REVOCATION_FETCH,
    Struct("known_version" / Int64ub * "version of the list the sender holds; 0 for none"),
    "RFC 5280 §5 (the idea of a CRL)",
    "Asks the login server for its current signed revocation list; it answers REVOCATION_LIST.",
)

REVOCATION_LIST = MessageSpec(
    MsgType.REVOCATION_LIST,
    SignedRevocationList,
    "RFC 5280 §5 (the idea of a CRL); RFC 8032 §5.1.6 (Ed25519 signature)",
    "The login server's signed list of revoked certificate serials, a SignedRevocationList. "
    "The receiver checks the signature with the issuer key it trusts, refuses a list whose "
    "next_update has passed, and applies it only if its version is higher than the one it "
    "holds. Anyone may pass the exact bytes on.",
)

RELAY_REQUEST = MessageSpec(
    MsgType.RELAY_REQUEST,
    Struct("ttl" / Int32ub * "seconds the credentials should last; the server may give fewer"),
    "draft-uberti-behave-turn-rest-00 (ephemeral TURN credentials)",
    "Asks the login server for credentials for the TURN relays; it answers RELAY_CREDENTIALS.",
)

RELAY_CREDENTIALS = MessageSpec(
    MsgType.RELAY_CREDENTIALS,
    Struct(
        "username"
        / Text(RELAY_USERNAME_MAX)
        * "TURN USERNAME: the expiry time, a colon, the user id",
        "password"
        / Text(RELAY_PASSWORD_MAX)
        * "TURN password: base64 of HMAC-SHA1(shared secret, username)",
        "expires" / Int64ub * "when the relays stop accepting them, Unix seconds",
        "uris"
        / Array(8, Text(255))
        * "relays to use, as RFC 7065 URIs, e.g. turn:198.18.0.20:3478?transport=udp",
    ),
    "draft-uberti-behave-turn-rest-00 (ephemeral TURN credentials); RFC 8489 §9.2 "
    "(long-term credentials, as TURN uses them: RFC 8656); RFC 7065 (TURN URIs)",
    "Time-limited credentials for the TURN relays, which share a secret with the login "
    "server and check them without asking it (coturn's use-auth-secret). A device uses "
    "them as the long-term credential username and password of its TURN allocations.",
)

DEVICE_KEYS_REQUEST = MessageSpec(
    MsgType.DEVICE_KEYS_REQUEST,
    Struct("user_id" / UserId * "whose devices are wanted"),
    "edge mailbox (no external spec)",
    "Asks the login server for the certificates of every device of a user, so that the "
    "sender can seal a mailbox item to each of them. It answers DEVICE_KEYS.",
)

DEVICE_KEYS = MessageSpec(
    MsgType.DEVICE_KEYS,
    Struct(
        "user_id" / UserId * "from the DEVICE_KEYS_REQUEST",
        "certificates"
        / Array(DEVICE_CERTIFICATES_MAX, CertificateBlob)
        * "the current certificate of each of the user's devices, exact signed bytes",
    ),
    "RFC 8032 §5.1.6 (Ed25519 signature); RFC 7748 (the X25519 keys they carry)",
    "The user's device certificates; empty if the user has none or does not exist. The "
    "receiver verifies each one and seals to its dh_key.",
)

PRESENCE_PUBLISH = MessageSpec(
    MsgType.PRESENCE_PUBLISH,
    Struct(
        "request_id" / Int32ub * "echoed in the PRESENCE_RESULT",
        "record" / Blob(SIGNED_PRESENCE_MAX) * "one SignedPresence, its exact signed bytes",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (STORE); RFC 8032 §5.1.6 (signature)",
    "A device hands its supernode a presence record it signed. The supernode checks it as "
    "any holder would, stores it at the k overlay nodes closest to the user's key, and "
    "answers PRESENCE_RESULT: OK and on how many nodes it was stored, or why it was refused.",
)

PRESENCE_LOOKUP = MessageSpec(
    MsgType.PRESENCE_LOOKUP,
    Struct(
        "request_id" / Int32ub * "echoed in the PRESENCE_RESULT",
        "user_id" / UserId * "whose presence is wanted",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002), FIND_VALUE",
    "Where is this user? Asked of a supernode, which looks it up in the overlay.",
)

PRESENCE_RESULT = MessageSpec(
    MsgType.PRESENCE_RESULT,
    Struct(
        "request_id" / Int32ub * "from the PRESENCE_PUBLISH or PRESENCE_LOOKUP",
        "code"
        / EnumField(ErrorCode, 2, accept_unknown=True)
        * "OK; NOT_FOUND for a lookup that found nothing; for a publish, why the record was "
        "refused (e.g. a CERT_ code, REPLAYED)",
        "stored" / Int8ub * "publish: on how many overlay nodes the record was stored; lookup: 0",
        "records"
        / Array(DHT_RECORDS_MAX, Blob(SIGNED_PRESENCE_MAX))
        * "lookup: the records found, each a SignedPresence's exact bytes; publish: empty",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (STORE, FIND_VALUE)",
    "The answer to PRESENCE_PUBLISH or PRESENCE_LOOKUP. The receiver of a lookup's records "
    "checks each one (signature, certificate, user, times) before using it, as the "
    "supernode did.",
)

SEARCH = MessageSpec(
    MsgType.SEARCH,
    Struct(
        "request_id" / Int32ub * "echoed in the SEARCH_RESULT",
        "query" / Text(64) * "text to match against user ids and display names",
        "max_results" / Int8ub * "the most entries wanted (the answer holds at most 32)",
    ),
    "edge directory search (no external spec)",
    "Find users by name.",
)

SEARCH_RESULT = MessageSpec(
    MsgType.SEARCH_RESULT,
    Struct(
        "request_id" / Int32ub * "from the SEARCH",
        "entries"
        / Array(
            32,
            Struct(
                "user_id" / UserId * "the user found",
                "display_name" / Text(DISPLAY_NAME_MAX) * "their chosen name",
                "online" / Bool8 * "1 if a presence record exists now",
            ),
        )
        * "users matching the query",
    ),
    "edge directory search (no external spec)",
    "Users matching a SEARCH.",
)

DHT_PING = MessageSpec(
    MsgType.DHT_PING,
    Struct("request_id" / Int32ub * "chosen by the sender, echoed in the DHT_PONG"),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (PING), §2.2 (probing a bucket's oldest)",
    "Is this supernode alive? Sent between supernodes, inside a Noise session, which "
    "authenticates the sender and so its node id. Answered with DHT_PONG.",
)

LOAD_UNKNOWN = 0xFF
"""A load field's value when the sender does not report one."""

DHT_PONG = MessageSpec(
    MsgType.DHT_PONG,
    Struct(
        "request_id" / Int32ub * "from the DHT_PING",
        "load"
        / Int8ub
        * f"the sender's clients in percent of its capacity, 0..100; {LOAD_UNKNOWN}: not reported",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (PING)",
    "The answer to DHT_PING: the sender is alive and stays in the asker's k-bucket. Its "
    "load lets the asker send clients where there is room (load spreading).",
)

DHT_FIND_NODE = MessageSpec(
    MsgType.DHT_FIND_NODE,
    Struct(
        "request_id" / Int32ub * "chosen by the sender, echoed in the DHT_NODES",
        "key" / DhtId * "the id whose closest nodes are wanted",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (FIND_NODE), §2.1 (XOR distance)",
    "Asks for the k nodes the receiver knows closest to key by XOR distance, one step "
    "of an iterative lookup. Answered with DHT_NODES.",
)

DHT_FIND_VALUE = MessageSpec(
    MsgType.DHT_FIND_VALUE,
    Struct(
        "request_id" / Int32ub * "chosen by the sender, echoed in the answer",
        "key" / DhtId * "the key whose records are wanted, e.g. a user's presence key",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (FIND_VALUE)",
    "Asks for the records held under key. Answered with DHT_VALUES when the receiver "
    "holds any, else with DHT_NODES, as for DHT_FIND_NODE.",
)

DHT_NODES = MessageSpec(
    MsgType.DHT_NODES,
    Struct(
        "request_id" / Int32ub * "from the DHT_FIND_NODE or DHT_FIND_VALUE",
        "contacts"
        / Array(DHT_CONTACTS_MAX, NodeContact)
        * "the closest nodes to the key the sender knows, at most k",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (FIND_NODE), §2.4 (k closest)",
    "Contacts that bring a lookup closer to its key. The receiver learns them as "
    "candidates; each proves its id only when a session with it completes.",
)

DHT_VALUES = MessageSpec(
    MsgType.DHT_VALUES,
    Struct(
        "request_id" / Int32ub * "from the DHT_FIND_VALUE",
        "records"
        / Array(DHT_RECORDS_MAX, Blob(DHT_RECORD_MAX))
        * "the records held under the key, each a SignedPresence's exact bytes",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (FIND_VALUE); RFC 8032 §5.1.6 (signatures)",
    "The records held under a key, at most one per slot. The overlay does not trust the "
    "sender: the receiver checks each record's signature and certificate before using it.",
)

DHT_STORE = MessageSpec(
    MsgType.DHT_STORE,
    Struct(
        "request_id" / Int32ub * "chosen by the sender, echoed in the DHT_STORED",
        "key" / DhtId * "the key to keep the record under",
        "record" / Blob(DHT_RECORD_MAX) * "a SignedPresence's exact bytes",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (STORE), §2.5 (republishing)",
    "Asks the receiver to keep a record under key, replacing an older sequence in the "
    "same slot. Sent to the k closest nodes a lookup found, and again by every holder "
    "each hour. Answered with DHT_STORED.",
)

DHT_STORED = MessageSpec(
    MsgType.DHT_STORED,
    Struct(
        "request_id" / Int32ub * "from the DHT_STORE",
        "code"
        / EnumField(ErrorCode, 2)
        * "OK, or why the record was refused (FORBIDDEN, REPLAYED, OVERSIZED, BUSY)",
    ),
    "Kademlia (Maymounkov and Mazieres, 2002) §2.3 (STORE)",
    "The outcome of a DHT_STORE.",
)

BUDDY_OP = MessageSpec(
    MsgType.BUDDY_OP,
    Struct(
        "op" / EnumField(BuddyOp) * "what to do",
        "user_id" / UserId * "the buddy concerned",
        "note" / Detail * "text shown with an add request; empty otherwise",
    ),
    "edge buddy list (no external spec)",
    "Changes the sender's buddy list on the login server: ask someone to be a buddy, "
    "answer such a request, remove, block or unblock.",
)

BUDDY_SYNC = MessageSpec(
    MsgType.BUDDY_SYNC,
    Struct("since_version" / Int64ub * "last list version held; 0 for the whole list"),
    "edge buddy list (no external spec)",
    "Asks the login server for the changes to the buddy list since a version.",
)

BUDDY_LIST = MessageSpec(
    MsgType.BUDDY_LIST,
    Struct(
        "version" / Int64ub * "list version after applying these entries",
        "since_version"
        / Int64ub
        * "a delta holds the changes after this version (0 for a whole list); a receiver "
        "whose list is older cannot apply it and must sync from its own version",
        "full" / Bool8 * "1: the whole list; 0: only entries changed since since_version",
        "more" / Bool8 * "1: more BUDDY_LIST messages of this answer follow",
        "entries"
        / Array(
            BUDDY_ENTRIES_MAX,
            Struct(
                "user_id" / UserId * "the buddy",
                "state" / EnumField(BuddyState) * "where the relationship stands",
                "display_name" / Text(DISPLAY_NAME_MAX) * "their chosen name",
                "note" / Detail * "the note of the buddy request, for PENDING_IN",
            ),
        )
        * "buddies",
    ),
    "edge buddy list (no external spec)",
    "The buddy list, whole or as a delta. A delta marks removed buddies REMOVED. A list "
    "longer than 128 entries comes as several messages, all with the same version; the "
    "last has more = 0, and only then is the receiver at that version.",
)

CALL_INVITE = MessageSpec(
    MsgType.CALL_INVITE,
    Struct(
        "call_id" / Id16 * "chosen at random by the caller",
        "caller" / UserId * "who calls",
        "callee" / UserId * "who is called",
        "candidates" / Array(16, Candidate) * "the caller's candidates",
        "codecs" / Array(8, EnumField(Codec)) * "codecs the caller accepts, preferred first",
        "ufrag" / Text(32) * "ICE username fragment for the connectivity checks",
        "pwd" / Text(64) * "ICE password for the connectivity checks",
    ),
    "RFC 8445 §5.1 (candidates); RFC 8839 §5.4 (ufrag, pwd)",
    "Offers a call. Sent end to end through the supernodes; the callee answers "
    "CALL_RINGING, then CALL_ACCEPT or CALL_REJECT.",
)

CALL_RINGING = MessageSpec(
    MsgType.CALL_RINGING,
    Struct("call_id" / Id16 * "from the CALL_INVITE"),
    "edge call signalling (no external spec)",
    "The callee is alerting its user.",
)

CALL_ACCEPT = MessageSpec(
    MsgType.CALL_ACCEPT,
    Struct(
        "call_id" / Id16 * "from the CALL_INVITE",
        "candidates" / Array(16, Candidate) * "the callee's candidates",
        "codec" / EnumField(Codec) * "the codec chosen from the offer",
        "ufrag" / Text(32) * "the callee's ICE username fragment",
        "pwd" / Text(64) * "the callee's ICE password",
    ),
    "RFC 8445 §5.1 (candidates); RFC 8839 §5.4 (ufrag, pwd)",
    "The callee answers; both sides start connectivity checks on their candidate pairs.",
)

CALL_REJECT = MessageSpec(
    MsgType.CALL_REJECT,
    Struct(
        "call_id" / Id16 * "from the CALL_INVITE",
        "reason" / EnumField(CallEndReason) * "why",
        "detail" / Detail * "human-readable detail, for logs",
    ),
    "edge call signalling (no external spec)",
    "The callee will not take the call.",
)

CALL_BYE = MessageSpec(
    MsgType.CALL_BYE,
    Struct(
        "call_id" / Id16 * "the call",
        "reason" / EnumField(CallEndReason) * "why",
        "detail" / Detail * "human-readable detail, for logs",
    ),
    "edge call signalling (no external spec)",
    "Ends a call, or cancels one not yet answered (reason CANCELLED).",
)

PATH_UPDATE = MessageSpec(
    MsgType.PATH_UPDATE,
    Struct(
        "call_id" / Id16 * "the call",
        "local" / Candidate * "the sender's end of the path now in use",
        "remote" / Candidate * "the receiver's end of the path now in use",
        "path_kind" / EnumField(PathKind) * "what kind of path it is",
    ),
    "RFC 8445 §8.1.1 (nominating pairs)",
    "The sender switched the call's media to another candidate pair, e.g. after the old path died.",
)

DEVICE_COMMAND = MessageSpec(
    MsgType.DEVICE_COMMAND,
    Struct(
        "call_id" / Id16 * "the active call between the two devices",
        "action" / EnumField(DeviceAction) * "what to do: OPEN_DOOR pulses a door strike",
    ),
    "edge device commands (no external spec)",
    "Asks the device at the other end of an active call to work its hardware, e.g. a door "
    "station to open its door. Sent in the call's own end-to-end session, so the sender is "
    "the certified peer of that call; the receiver carries it out only for the call that is "
    "active with that peer, and answers nothing (the callee hears the door).",
)

SIGNAL_PAYLOAD_MAX = 1200
"""Bytes of one forwarded signalling datagram: a Noise handshake message with a
certificate, or call signalling inside the clients' session, with room to spare
under a 1,280-byte path MTU once the two envelopes are added."""

SIGNAL_FORWARD = MessageSpec(
    MsgType.SIGNAL_FORWARD,
    Struct(
        "to_user" / UserId * "whom it is for",
        "to_device" / Text(DEVICE_ID_MAX) * "one device of that user, or empty for every device",
        "payload"
        / Blob(SIGNAL_PAYLOAD_MAX)
        * "an edge datagram of the two clients' own session (handshake or TRANSPORT)",
    ),
    "edge rendezvous (no external spec); the seed's supernode-relayed signalling",
    "A client asks its supernode to carry bytes to another user's devices, before the two "
    "have a path of their own. The supernode answers nothing; it stamps the sender and "
    "passes it on as SIGNAL_RELAYED to the devices' supernodes, found by their presence.",
)

SIGNAL_RELAYED = MessageSpec(
    MsgType.SIGNAL_RELAYED,
    Struct(
        "to_user" / UserId * "from the SIGNAL_FORWARD",
        "to_device" / Text(DEVICE_ID_MAX) * "from the SIGNAL_FORWARD",
        "from_user" / UserId * "the sender, as its certificate names it to the first supernode",
        "from_device" / Text(DEVICE_ID_MAX) * "the sender's device, likewise",
        "from_address"
        / Address
        * "where the sender's session reached the first supernode: its reflexive address",
        "payload" / Blob(SIGNAL_PAYLOAD_MAX) * "from the SIGNAL_FORWARD, unchanged",
    ),
    "edge rendezvous (no external spec); RFC 8445 §5.1.1.2 (server-reflexive candidates)",
    "Signalling on its way: from the sender's supernode to the recipient's supernode, and "
    "from there to the recipient's devices attached to it. A supernode delivers it only "
    "to its own devices and never forwards it again. The from_ fields are hints for "
    "routing and hole punching; the payload's own session authenticates the sender.",
)

INSTANT_MESSAGE = MessageSpec(
    MsgType.INSTANT_MESSAGE,
    Struct(
        "message_id" / Id16 * "chosen at random by the sender; receipts name it",
        "sender" / UserId * "who wrote it",
        "recipient" / UserId * "to whom",
        "sequence" / Int64ub * "per-conversation counter, to order and spot gaps",
        "sent_ms" / Millis * "sender's clock when sent",
        "text" / Text(4096) * "the message",
    ),
    "edge messaging (no external spec)",
    "A chat message, end to end encrypted like everything else.",
)

MESSAGE_RECEIPT = MessageSpec(
    MsgType.MESSAGE_RECEIPT,
    Struct(
        "message_id" / Id16 * "the message concerned",
        "status" / EnumField(ReceiptStatus) * "what became of it",
    ),
    "edge messaging (no external spec)",
    "Tells the sender of an INSTANT_MESSAGE what became of it.",
)

FILE_OFFER = MessageSpec(
    MsgType.FILE_OFFER,
    Struct(
        "file_id" / Id16 * "chosen at random by the sender",
        "name" / Text(255) * "file name, no directories",
        "size" / Int64ub * "bytes",
        "sha256" / Key32 * "SHA-256 of the whole file (FIPS 180-4)",
        "chunk_size" / Bounded(4, 1, FILE_CHUNK_MAX) * "bytes per FILE_CHUNK",
    ),
    "FIPS 180-4 (SHA-256)",
    "Offers a file. The receiver accepts by sending FILE_ACK with offset 0 and a window.",
)

FILE_CHUNK = MessageSpec(
    MsgType.FILE_CHUNK,
    Struct(
        "file_id" / Id16 * "from the FILE_OFFER",
        "offset" / Int64ub * "where data goes in the file",
        "data" / Blob(FILE_CHUNK_MAX) * "file bytes",
    ),
    "edge file transfer (no external spec)",
    "A piece of a file, sent only within the receiver's window.",
)

FILE_ACK = MessageSpec(
    MsgType.FILE_ACK,
    Struct(
        "file_id" / Id16 * "from the FILE_OFFER",
        "offset" / Int64ub * "bytes received contiguously from the start",
        "window" / Int32ub * "further bytes the receiver will take beyond offset",
    ),
    "edge file transfer (no external spec)",
    "Acknowledges file bytes and grants credit, so the sender never outruns the receiver.",
)

MEDIA_FRAME = MessageSpec(
    MsgType.MEDIA_FRAME,
    Struct(
        "stream_id" / Int8ub * "which stream of the call",
        "codec" / EnumField(Codec) * "how payload is encoded",
        "flags" / Int8ub * "MediaFlag bits: 0x01 REDUNDANCY, 0x02 MARKER",
        "sequence" / Int16ub * "per stream, +1 per frame, wraps",
        "timestamp" / Int32ub * "sample clock of the first sample, wraps",
        "payload" / Rest(MEDIA_PAYLOAD_MAX) * "one encoded audio frame",
    ),
    "RFC 3550 §5.1 (sequence, timestamp, marker); RFC 6716 (Opus)",
    "One frame of audio. Sent inside TRANSPORT, so it is encrypted; the fixed part is "
    "9 bytes. Unknown flag bits are reserved: sent 0, ignored.",
)

KEEPALIVE = MessageSpec(
    MsgType.KEEPALIVE,
    Struct(
        "nonce" / Int32ub * "copied into the reply",
        "sent_ms" / Millis * "the requester's clock; copied into the reply, for RTT",
        "echo" / Bool8 * "1: please reply; 0: this is the reply",
    ),
    "RFC 8445 §11 (keepalives)",
    "Keeps NAT bindings open and measures round-trip time.",
)

MAILBOX_PUT = MessageSpec(
    MsgType.MAILBOX_PUT,
    Struct(
        "recipient" / UserId * "the user the item is for",
        "recipient_device" / Text(DEVICE_ID_MAX) * "the device it is sealed to",
        "message_id" / Id16 * "chosen at random by the sender; receipts name it",
        "kind" / EnumField(MailKind) * "what the sealed item holds",
        "sealed" / Blob(SEALED_MAX) * "the item, sealed to the device's X25519 key",
    ),
    "libsodium sealed boxes (crypto_box_seal: X25519, XSalsa20-Poly1305)",
    "Leaves an item on the login server for a device that is offline, one MAILBOX_PUT per "
    "device of the recipient. The server cannot read it; it answers MAILBOX_STORED, or "
    "ERROR (BUSY when the mailbox is full).",
)

MAILBOX_STORED = MessageSpec(
    MsgType.MAILBOX_STORED,
    Struct(
        "message_id" / Id16 * "from the MAILBOX_PUT",
        "item_id" / Int64ub * "the server's id for the stored item",
    ),
    "edge mailbox (no external spec)",
    "The login server has stored a MAILBOX_PUT.",
)

MAILBOX_FETCH = MessageSpec(
    MsgType.MAILBOX_FETCH,
    Struct("max_items" / Int8ub * "the most MAILBOX_ITEMs wanted in answer"),
    "edge mailbox (no external spec)",
    "A device asks for the items waiting for it, oldest first.",
)

MAILBOX_ITEM = MessageSpec(
    MsgType.MAILBOX_ITEM,
    Struct(
        "item_id" / Int64ub * "the server's id, to name in MAILBOX_ACK",
        "sender" / UserId * "who left it, as authenticated by the login server",
        "sender_device" / Text(DEVICE_ID_MAX) * "the sender's device",
        "message_id" / Id16 * "from the sender's MAILBOX_PUT",
        "kind" / EnumField(MailKind) * "what the sealed item holds",
        "sealed" / Blob(SEALED_MAX) * "the item as the sender sealed it",
        "stored_ms" / Millis * "when the server stored it",
        "remaining" / Int32ub * "items still waiting after this one",
    ),
    "libsodium sealed boxes (crypto_box_seal_open)",
    "One stored item, in answer to MAILBOX_FETCH. The server keeps it until the device "
    "acknowledges it with MAILBOX_ACK.",
)

MAILBOX_ACK = MessageSpec(
    MsgType.MAILBOX_ACK,
    Struct(
        "item_ids"
        / Array(MAILBOX_ACK_MAX, Int64ub)
        * "items the device has opened and kept; the server deletes them",
    ),
    "edge mailbox (no external spec)",
    "Acknowledges fetched items, so they are not delivered again.",
)

MAILBOX_STATUS = MessageSpec(
    MsgType.MAILBOX_STATUS,
    Struct("waiting" / Int32ub * "items still waiting for this device after this answer"),
    "edge mailbox (no external spec)",
    "Ends the answer to a MAILBOX_FETCH (after zero or more MAILBOX_ITEMs) and says how "
    "many items still wait: a desk phone lights its message-waiting lamp on it.",
)

ERROR = MessageSpec(
    MsgType.ERROR,
    Struct(
        "code" / EnumField(ErrorCode, 2, accept_unknown=True) * "what went wrong",
        "about_type" / EnumField(MsgType, accept_unknown=True) * "the offending type, or 0",
        "detail" / Detail * "human-readable detail, for logs",
    ),
    "edge (no external spec)",
    "Reports that a message was refused. Never sent in answer to an ERROR.",
)

# ---------------------------------------------------------------- dial-back (promotion) messages

DIALBACK_REQUEST = MessageSpec(
    MsgType.DIALBACK_REQUEST,
    Struct(
        "request_id" / Int32ub * "chosen by the client, echoed in the DIALBACK_RESULT",
        "port" / Bounded(2, 1, 0xFFFF) * "the client's listening port P, where the probe goes",
    ),
    "edge promotion (no external spec); the idea of RFC 5780 §4.4 (filtering behaviour)",
    "A client that its operator allows to become a supernode asks a supernode, inside its "
    "session, to test whether it can be reached unsolicited. The supernode sends a "
    "DIALBACK_PROBE to the IP the session comes from (never another) at the given port, and "
    "answers DIALBACK_RESULT: at once with RATE_LIMITED or BUSY when it will not test, "
    "else when the client confirms or the test times out.",
)

DIALBACK_PROBE = MessageSpec(
    MsgType.DIALBACK_PROBE,
    Struct(
        "nonce"
        / Bytes(DIALBACK_NONCE_SIZE)
        * "fresh random bytes the client returns in DIALBACK_CONFIRM",
        "supernode_key_id"
        / Bytes(8)
        * "key id of the supernode's sign_key: which session to confirm in",
    ),
    "edge promotion (no external spec); the idea of RFC 5780 §4.4 (filtering behaviour)",
    "Sent in clear, outside any session, from a fresh UDP socket of the supernode: a NAT "
    "mapping or firewall state the client's session opened does not let it through, so it "
    "arrives only where unsolicited traffic does. Smaller than the request that caused it, "
    "and never answered on the path it came from: the client returns the nonce inside its "
    "session, so a forged source address gains nothing.",
)

DIALBACK_CONFIRM = MessageSpec(
    MsgType.DIALBACK_CONFIRM,
    Struct(
        "request_id" / Int32ub * "from the DIALBACK_REQUEST",
        "nonce" / Bytes(DIALBACK_NONCE_SIZE) * "from the DIALBACK_PROBE that arrived",
    ),
    "edge promotion (no external spec)",
    "The client got the probe: it returns the nonce inside the session it asked in. One "
    "try per test: a wrong nonce ends the test as unreachable.",
)

DIALBACK_RESULT = MessageSpec(
    MsgType.DIALBACK_RESULT,
    Struct(
        "request_id" / Int32ub * "from the DIALBACK_REQUEST",
        "code"
        / EnumField(ErrorCode, 2, accept_unknown=True)
        * "OK: the test ran; RATE_LIMITED or BUSY: it did not, ask later",
        "reachable" / Bool8 * "1: the right nonce came back in time; 0 otherwise",
        "observed" / OptionalAddress * "where the probe was sent; none when no test ran",
        "attestation"
        / Blob(DIALBACK_ATTESTATION_MAX)
        * "reachable: a DialbackAttestation, its exact signed bytes; else empty",
    ),
    "edge promotion (no external spec); RFC 8032 §5.1.6 (the attestation's signature)",
    "The outcome of a dial-back test, inside the session. When the client was reached it "
    "carries the supernode's signed attestation, which the client keeps and shows later.",
)

# ---------------------------------------------------------------- attaching, host cache

RTT_UNKNOWN = 0xFFFF
HOST_ENTRY_LOGIN_SERVER = 0x01
HOSTCACHE_PAGE = 48
"""Host cache entries in one HOSTCACHE: 48 IPv6 entries still fit one datagram."""
HOSTCACHE_MAX = 200
"""The seed's host cache: up to 200 supernodes (and the login server)."""
ALTERNATIVES_MAX = 8

HostEntry = Struct(
    "address" / Address * "where the supernode (or login server) listens, UDP and TCP",
    "rtt_ms"
    / Int16ub
    * f"the giver's measured round-trip time to it in ms; {RTT_UNKNOWN}: not measured",
    "flags" / Int8ub * f"{HOST_ENTRY_LOGIN_SERVER:#04x}: a login server, not a supernode",
)

ATTACH = MessageSpec(
    MsgType.ATTACH,
    Struct(
        "request_id" / Int32ub * "echoed in the ATTACH_RESULT",
        "redirects" / Int8ub * "how many supernodes redirected this device in this attempt",
    ),
    "edge supernode service (no external spec)",
    "A device asks the supernode its session reached to serve it: keep its presence, "
    "carry its signalling. Sent once the session is up.",
)

ATTACH_RESULT = MessageSpec(
    MsgType.ATTACH_RESULT,
    Struct(
        "request_id" / Int32ub * "from the ATTACH",
        "code"
        / EnumField(ErrorCode, 2, accept_unknown=True)
        * "OK: attached; BUSY: not attached, try the alternatives (then the host cache)",
        "load"
        / Int8ub
        * f"the supernode's clients in percent of its capacity; {LOAD_UNKNOWN}: none",
        "alternatives"
        / Array(ALTERNATIVES_MAX, HostEntry)
        * "with BUSY: supernodes known to have room, best first",
    ),
    "edge supernode service (no external spec)",
    "The answer to ATTACH. A supernode above its soft limit redirects new devices to "
    "peers with room, so devices spread instead of piling onto the first supernodes "
    "they learn; past a few redirects a device is admitted anywhere below the hard limit.",
)

HOSTCACHE_REQUEST = MessageSpec(
    MsgType.HOSTCACHE_REQUEST,
    Struct(
        "request_id" / Int32ub * "echoed in the HOSTCACHE",
        "offset" / Int8ub * "the first entry wanted; 0, then the next page's start",
    ),
    "edge supernode service (no external spec); the seed's host cache exchange",
    "A device asks for the supernode's list of other live supernodes.",
)

HOSTCACHE = MessageSpec(
    MsgType.HOSTCACHE,
    Struct(
        "request_id" / Int32ub * "from the HOSTCACHE_REQUEST",
        "total" / Int8ub * f"entries in the whole list (at most {HOSTCACHE_MAX})",
        "offset" / Int8ub * "where this page starts",
        "entries" / Array(HOSTCACHE_PAGE, HostEntry) * "this page, best first",
    ),
    "edge supernode service (no external spec); the seed's host cache exchange",
    "Up to 200 live supernodes the giver heard from recently, ranked by freshness and "
    "its measured round-trip time (full ones left out), then the login servers, flagged; "
    "a draw among the best, so two devices asking get different lists and spread.",
)

DETACH = MessageSpec(
    MsgType.DETACH,
    Struct(
        "code"
        / EnumField(ErrorCode, 2, accept_unknown=True)
        * "UNAVAILABLE: the supernode is shutting down; BUSY: it sheds load",
        "alternatives" / Array(ALTERNATIVES_MAX, HostEntry) * "where to go, best first",
    ),
    "edge supernode service (no external spec)",
    "The supernode stops serving this device and hands it to others: the device "
    "attaches to an alternative (or its host cache) and publishes its presence there.",
)

TUNNEL_CHUNK_MAX = 1024
"""Bytes of the login stream in one LOGIN_TUNNEL_DATA: with the tunnel's fields and
the device session's own envelope it stays under a 1,280-byte path MTU."""

LOGIN_TUNNEL_OPEN = MessageSpec(
    MsgType.LOGIN_TUNNEL_OPEN,
    Struct(
        "tunnel_id" / Int32ub * "chosen by the device, unique among its open tunnels",
    ),
    "edge login tunnel (no external spec); the seed's login through a supernode",
    "A device that cannot reach the login server asks its supernode to open a TCP "
    "connection to the login server the supernode is configured with. The supernode "
    "answers an empty LOGIN_TUNNEL_DATA once connected, or LOGIN_TUNNEL_CLOSE. The "
    "device repeats OPEN until one comes; a repeat of an open tunnel is answered again.",
)

LOGIN_TUNNEL_DATA = MessageSpec(
    MsgType.LOGIN_TUNNEL_DATA,
    Struct(
        "tunnel_id" / Int32ub * "from the LOGIN_TUNNEL_OPEN",
        "seq" / Int32ub * "this chunk's number, from 0; with empty data: the next number",
        "ack" / Int32ub * "every chunk below this number arrived (cumulative)",
        "data"
        / Blob(TUNNEL_CHUNK_MAX)
        * "the next bytes of the device's TCP stream with the login server; empty: only an ack",
    ),
    "edge login tunnel (no external spec); go-back-N as in RFC 3366 §2.3.1",
    "The device's own Noise session with the login server, pinned to its key, as "
    "opaque bytes: the supernode sees ciphertext only. Chunks are numbered and "
    "acknowledged, and repeated until acknowledged, since the device's session with "
    "the supernode may be UDP; a chunk out of order is dropped and the expected "
    "number acknowledged again.",
)

LOGIN_TUNNEL_CLOSE = MessageSpec(
    MsgType.LOGIN_TUNNEL_CLOSE,
    Struct(
        "tunnel_id" / Int32ub * "from the LOGIN_TUNNEL_OPEN",
        "code"
        / EnumField(ErrorCode, 2, accept_unknown=True)
        * "OK: ended; UNAVAILABLE: the login server is unreachable or left; "
        "BUSY: too many tunnels; RATE_LIMITED: too many opened lately; NOT_FOUND: no such tunnel",
    ),
    "edge login tunnel (no external spec)",
    "Either side ends the tunnel; the supernode closes its TCP connection to the "
    "login server. Not answered.",
)

SPECS: dict[MsgType, MessageSpec] = {
    spec.type: spec
    for spec in (
        HANDSHAKE_INIT,
        HANDSHAKE_RESP,
        HANDSHAKE_FINISH,
        COOKIE_REPLY,
        TRANSPORT,
        LOGIN_HELLO,
        LOGIN_CHALLENGE,
        LOGIN_PASSWORD,
        LOGIN_DEVICE_PROOF,
        LOGIN_RESULT,
        CERTIFICATE,
        LOGIN_REGISTER,
        REVOCATION_FETCH,
        REVOCATION_LIST,
        RELAY_REQUEST,
        RELAY_CREDENTIALS,
        DEVICE_KEYS_REQUEST,
        DEVICE_KEYS,
        PRESENCE_PUBLISH,
        PRESENCE_LOOKUP,
        PRESENCE_RESULT,
        SEARCH,
        SEARCH_RESULT,
        DHT_PING,
        DHT_PONG,
        DHT_FIND_NODE,
        DHT_FIND_VALUE,
        DHT_NODES,
        DHT_VALUES,
        DHT_STORE,
        DHT_STORED,
        BUDDY_OP,
        BUDDY_SYNC,
        BUDDY_LIST,
        CALL_INVITE,
        CALL_RINGING,
        CALL_ACCEPT,
        CALL_REJECT,
        CALL_BYE,
        PATH_UPDATE,
        SIGNAL_FORWARD,
        SIGNAL_RELAYED,
        DEVICE_COMMAND,
        INSTANT_MESSAGE,
        MESSAGE_RECEIPT,
        FILE_OFFER,
        FILE_CHUNK,
        FILE_ACK,
        MEDIA_FRAME,
        KEEPALIVE,
        MAILBOX_PUT,
        MAILBOX_STORED,
        MAILBOX_FETCH,
        MAILBOX_ITEM,
        MAILBOX_ACK,
        MAILBOX_STATUS,
        ERROR,
        DIALBACK_REQUEST,
        DIALBACK_PROBE,
        DIALBACK_CONFIRM,
        DIALBACK_RESULT,
        ATTACH,
        ATTACH_RESULT,
        HOSTCACHE_REQUEST,
        HOSTCACHE,
        DETACH,
        LOGIN_TUNNEL_OPEN,
        LOGIN_TUNNEL_DATA,
        LOGIN_TUNNEL_CLOSE,
    )
}

BODIES: dict[MsgType, Construct] = {msg_type: spec.body for msg_type, spec in SPECS.items()}
"""The body declaration of every message type: the single source of truth."""

BODY_CAPS: dict[MsgType, int] = {t: size_range(body)[1] for t, body in BODIES.items()}
"""Largest body each type can have, computed from the field caps."""

if max(BODY_CAPS.values()) > MAX_BODY:
    raise BuildError("a body declaration can exceed the largest body a header can announce")

Header = Struct(
    "magic" / Const(MAGIC) * "0xED 0x9E; outside the first-byte ranges RFC 7983 assigns",
    "version" / Int8ub * "protocol version, 1",
    "type" / EnumField(MsgType) * "message type, selects the body",
    "flags" / Int16ub * "0x0001 ACK_REQUESTED; other bits reserved: sent 0, ignored",
    "length" / Int16ub * "body length in bytes; exactly this many bytes follow",
)
"""The 8-byte header, declared for the document and for comparison with the hot path."""

Frame = Struct(
    "header" / Header * "see above",
    "body" / FixedSized(this.header.length, Switch(this.header.type, BODIES)) * "per type",
)
"""A whole message as one declaration. decode() does not use it (see the module doc)."""


# ---------------------------------------------------------------- codec


@dataclass(frozen=True)
class Message:
    """A decoded message: its type, its body fields, and its known header flags."""

    type: MsgType
    body: Any
    """A construct ``Container``: read fields as attributes (``body.text``) or keys."""
    flags: int = 0

    @property
    def ack_requested(self) -> bool:
        return bool(self.flags & HeaderFlag.ACK_REQUESTED)


_HEADER = struct.Struct(">2sBBHH")
_TYPES: dict[int, MsgType] = {int(t): t for t in BODIES}
_BUILD_FAILURES = (
    ConstructError,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    IndexError,
    OverflowError,
)
_PARSE_FAILURES = (ConstructError, KeyError, TypeError, ValueError, IndexError, OverflowError)


def encode(msg_type: MsgType, body: Mapping[str, Any], flags: int = 0) -> bytes:
    """Header and body bytes of one message.

    Raises :class:`BuildError` (or :class:`CapExceeded`) when a field is missing,
    of the wrong type, out of range or over its cap, or when ``flags`` sets a
    reserved bit. Extra keys in ``body`` are ignored.
    """
    known = _TYPES.get(msg_type) if isinstance(msg_type, int) else None
    if known is None:
        raise BuildError(f"no message type {msg_type!r}")
    spec = SPECS[known]
    if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~KNOWN_FLAGS:
        raise BuildError(f"{spec.type.name}: flags {flags!r} set reserved bits")
    payload = build_exact(spec.body, body, f"{spec.type.name} body")
    return _HEADER.pack(MAGIC, PROTOCOL_VERSION, spec.type, flags, len(payload)) + payload


def decode(data: bytes) -> Message:
    """Parse exactly one whole message; raises only :class:`WireError` subclasses."""
    msg_type, flags = _read_header(data)
    body = parse_exact(BODIES[msg_type], data[HEADER_SIZE:], f"{msg_type.name} body")
    return Message(msg_type, body, flags)


def unpack_header(data: bytes) -> tuple[MsgType, int, int]:
    """Type, known flag bits and announced body length, from the first 8 bytes.

    Checks magic, version and type only, not the body or whether ``length``
    bytes follow: enough to route a message before parsing it. Plain
    ``struct``, as cheap as a header can be read; the per-packet paths in
    :mod:`edge.wire.hot` use it too.
    """
    if len(data) < HEADER_SIZE:
        raise Truncated(f"{len(data)} bytes; a header needs {HEADER_SIZE}")
    magic, version, type_value, flags, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMagic(f"magic 0x{magic.hex()}, expected 0x{MAGIC.hex()}")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version)
    msg_type = _TYPES.get(type_value)
    if msg_type is None:
        raise UnknownType(type_value)
    return msg_type, flags & KNOWN_FLAGS, length


def _read_header(data: bytes) -> tuple[MsgType, int]:
    msg_type, flags, length = unpack_header(data)
    _check_length(msg_type, length, len(data) - HEADER_SIZE)
    return msg_type, flags


def _check_length(msg_type: MsgType, length: int, present: int) -> None:
    cap = BODY_CAPS[msg_type]
    if length > cap:
        raise Oversized(f"{msg_type.name}: header announces {length} body bytes, cap {cap}")
    if length > present:
        raise Truncated(f"{msg_type.name}: header announces {length} body bytes, {present} present")
    if length < present:
        raise Malformed(f"{msg_type.name}: {present - length} bytes after the {length}-byte body")


def parse_exact(layout: Construct, data: bytes, what: str) -> Any:
    """Parse ``data`` with ``layout``, which must consume all of it; only our errors escape.

    ``what`` opens every error message (e.g. ``"certificate"``).
    """
    stream = io.BytesIO(data)
    try:
        value = layout.parse_stream(stream)
    except (Malformed, Oversized) as exc:
        raise type(exc)(f"{what}, {exc}") from None
    except _PARSE_FAILURES as exc:
        raise Malformed(f"{what}, {_explain(exc)}") from exc
    left = len(data) - stream.tell()
    if left:
        raise Malformed(f"{what}: {left} bytes left over after the last field")
    return _without_stream(value)


def build_exact(layout: Construct, value: Mapping[str, Any], what: str) -> bytes:
    """Bytes of ``value`` under ``layout``; raises only :class:`BuildError` subclasses."""
    try:
        return bytes(layout.build(value))
    except BuildError as exc:
        raise type(exc)(f"{what}, {exc}") from None
    except _BUILD_FAILURES as exc:
        raise BuildError(f"{what}, {_explain(exc)}") from exc


def _explain(exc: Exception) -> str:
    if isinstance(exc, ConstructError):
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return f"{field_name(exc.path or '')}: {detail}"
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return f"{type(exc).__name__}: {exc}"


def _without_stream(value: Any) -> Any:
    # construct records the stream as "_io" in every parsed Struct; it would keep
    # the whole input alive and clutter every repr.
    if isinstance(value, Container):
        value.pop("_io", None)
        for item in value.values():
            _without_stream(item)
    elif isinstance(value, list):
        for item in value:
            _without_stream(item)
    return value


# ---------------------------------------------------------------- shared-structure wrappers

_CERTIFICATE_MAX = size_range(Certificate)[1]
_TBS_MAX = size_range(CertificateTBS)[1]
_PAYLOAD_MAX = size_range(HandshakePayload)[1]
_REVOCATIONS_MAX = size_range(RevocationList)[1]
_SIGNED_REVOCATIONS_MAX = size_range(SignedRevocationList)[1]


def _parse_capped(layout: Construct, data: bytes, cap: int, what: str) -> Container:
    if len(data) > cap:
        raise Oversized(f"{what}: {len(data)} bytes, at most {cap}")
    result: Container = parse_exact(layout, data, what)
    return result


def parse_certificate(data: bytes) -> Container:
    """A Certificate's fields (``tbs``, ``signature``). The signature is not checked here."""
    return _parse_capped(Certificate, data, _CERTIFICATE_MAX, "certificate")


def build_certificate(certificate: Mapping[str, Any]) -> bytes:
    """Bytes of a Certificate (``tbs`` and ``signature``)."""
    return build_exact(Certificate, certificate, "certificate")


def parse_certificate_tbs(data: bytes) -> Container:
    """The fields of a CertificateTBS."""
    return _parse_capped(CertificateTBS, data, _TBS_MAX, "certificate tbs")


def build_certificate_tbs(tbs: Mapping[str, Any]) -> bytes:
    """The bytes an issuer signs; ``version`` may be left out."""
    return build_exact(CertificateTBS, tbs, "certificate tbs")


def parse_signed_presence(data: bytes) -> Container:
    """A SignedPresence's fields (``tbs``, ``signature``), signature unchecked.

    The signed bytes are :data:`PRESENCE_CONTEXT` and all of ``data`` but the
    last 64: the encoding is canonical.
    """
    return _parse_capped(SignedPresence, data, SIGNED_PRESENCE_MAX, "signed presence")


def build_signed_presence(signed: Mapping[str, Any]) -> bytes:
    """Bytes of a SignedPresence (``tbs`` and ``signature``), signature taken as given.

    A device signs its records with :func:`edge.overlay.presence.make_presence`.
    """
    return build_exact(SignedPresence, signed, "signed presence")


def build_presence_tbs(tbs: Mapping[str, Any]) -> bytes:
    """The PresenceTBS bytes a device signs (after :data:`PRESENCE_CONTEXT`)."""
    return build_exact(PresenceTBS, tbs, "presence tbs")


def parse_handshake_payload(data: bytes) -> Container:
    """The fields of a HandshakePayload, as decrypted from a Noise handshake message."""
    return _parse_capped(HandshakePayload, data, _PAYLOAD_MAX, "handshake payload")


def build_handshake_payload(payload: Mapping[str, Any]) -> bytes:
    """The plaintext to put in a Noise handshake message."""
    return build_exact(HandshakePayload, payload, "handshake payload")


def parse_revocation_list(data: bytes) -> Container:
    """The fields of an (unsigned) RevocationList; ``serials`` is a strictly increasing list."""
    return _parse_capped(RevocationList, data, _REVOCATIONS_MAX, "revocation list")


def build_revocation_list(revocations: Mapping[str, Any]) -> bytes:
    """The bytes an issuer signs; ``serials`` must already be sorted and without repeats."""
    return build_exact(RevocationList, revocations, "revocation list")


def parse_signed_revocation_list(data: bytes) -> Container:
    """A SignedRevocationList's fields (``revocations``, ``signature``), signature unchecked.

    The signed bytes are all of ``data`` but the last 64: the encoding is canonical.
    """
    return _parse_capped(
        SignedRevocationList, data, _SIGNED_REVOCATIONS_MAX, "signed revocation list"
    )


def build_signed_revocation_list(signed: Mapping[str, Any]) -> bytes:
    """Bytes of a SignedRevocationList (``revocations`` and ``signature``)."""
    return build_exact(SignedRevocationList, signed, "signed revocation list")


def parse_dialback_attestation(data: bytes) -> Container:
    """A DialbackAttestation's fields (``tbs``, ``signature``), signature unchecked.

    The signed bytes are :data:`DIALBACK_CONTEXT` and all of ``data`` but the
    last 64: the encoding is canonical. :func:`edge.supernode.dialback.verify_attestation`
    checks it.
    """
    return _parse_capped(
        DialbackAttestation, data, DIALBACK_ATTESTATION_MAX, "dialback attestation"
    )


def build_dialback_attestation(signed: Mapping[str, Any]) -> bytes:
    """Bytes of a DialbackAttestation (``tbs`` and ``signature``), signature taken as given."""
    return build_exact(DialbackAttestation, signed, "dialback attestation")


def build_dialback_tbs(tbs: Mapping[str, Any]) -> bytes:
    """The DialbackTBS bytes a supernode signs (after :data:`DIALBACK_CONTEXT`)."""
    return build_exact(DialbackTBS, tbs, "dialback tbs")
