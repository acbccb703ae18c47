"""Golden bytes for every message type, written out by hand from the layout.

Each entry is a body, the header flags, and the expected bytes as hex, one
field per line with the reasoning beside it. Some are cross-checked again with
``struct.pack`` from the field values, independently of the declarations.
"""

import struct
from typing import Any

import pytest

from edge.wire.codes import MAGIC, PROTOCOL_VERSION, ErrorCode, MsgType, NoisePattern
from edge.wire.messages import (
    BuddyOp,
    BuddyState,
    CallEndReason,
    CandidateKind,
    Codec,
    DeviceAction,
    HeaderFlag,
    MailKind,
    PathKind,
    ReceiptStatus,
    Transport,
    build_certificate,
    build_dialback_attestation,
    build_dialback_tbs,
    build_handshake_payload,
    build_presence_tbs,
    build_revocation_list,
    build_signed_presence,
    build_signed_revocation_list,
    decode,
    encode,
    parse_certificate,
    parse_dialback_attestation,
    parse_handshake_payload,
    parse_revocation_list,
    parse_signed_presence,
    parse_signed_revocation_list,
)


def h(*parts: str) -> str:
    """Hex pieces, spaces allowed, joined into one string."""
    return "".join("".join(parts).split())


CALL_ID = bytes(range(16))
CALL_ID_HEX = "000102030405060708090a0b0c0d0e0f"

# Host candidate: RFC 8445 priority (126 << 24) + (65535 << 8) + 255 = 0x7effffff.
HOST_CANDIDATE = {
    "kind": CandidateKind.HOST,
    "transport": Transport.UDP,
    "priority": 0x7EFFFFFF,
    "foundation": 1,
    "address": ("192.168.1.10", 5000),
    "related": None,
}
HOST_CANDIDATE_HEX = h(
    "01",  # kind HOST
    "01",  # transport UDP
    "7effffff",  # priority
    "00000001",  # foundation
    "04 c0a8010a 1388",  # address: family 4, 192.168.1.10, port 5000
    "00",  # related: family 0, none
)  # 18 bytes

# Server-reflexive IPv6 candidate: (100 << 24) + (65535 << 8) + 255 = 0x64ffffff.
SRFLX_CANDIDATE = {
    "kind": CandidateKind.SERVER_REFLEXIVE,
    "transport": Transport.UDP,
    "priority": 0x64FFFFFF,
    "foundation": 2,
    "address": ("2001:db8::1", 40000),
    "related": ("192.168.1.10", 5000),
}
SRFLX_CANDIDATE_HEX = h(
    "02 01 64ffffff 00000002",
    "06 20010db8000000000000000000000001 9c40",  # 2001:db8::1, port 40000
    "04 c0a8010a 1388",  # related 192.168.1.10:5000
)  # 36 bytes

# Relay candidate over TCP: type preference 0, so 0x00ffffff.
RELAY_CANDIDATE = {
    "kind": CandidateKind.RELAY,
    "transport": Transport.TCP,
    "priority": 0x00FFFFFF,
    "foundation": 3,
    "address": ("198.18.0.1", 443),
    "related": ("198.18.0.2", 50000),
}
RELAY_CANDIDATE_HEX = h(
    "04 02 00ffffff 00000003",
    "04 c6120001 01bb",  # 198.18.0.1:443
    "04 c6120002 c350",  # 198.18.0.2:50000
)  # 24 bytes

TBS = {
    "serial": 0x0102030405060708,
    "user_id": "bob",
    "device_id": "",
    "sign_key": b"\x55" * 32,
    "dh_key": b"\x66" * 32,
    "not_before": 0x65000000,
    "not_after": 0x66000000,
    "issuer_key_id": bytes.fromhex("0807060504030201"),
}
CERTIFICATE = {"tbs": TBS, "signature": b"\x77" * 64}
CERTIFICATE_HEX = h(
    "01",  # version, constant 1
    "0102030405060708",  # serial
    "03 626f62",  # user_id "bob"
    "00",  # device_id ""
    "55" * 32,  # sign_key
    "66" * 32,  # dh_key
    "0000000065000000",  # not_before
    "0000000066000000",  # not_after
    "0807060504030201",  # issuer_key_id
    "77" * 64,  # signature
)  # 102 + 64 = 166 = 0xa6 bytes

ATTESTATION_TBS = {
    "version": 1,
    "user_id": "bob",
    "device_id": "",
    "observed": ("198.18.0.5", 40000),
    "supernode": ("198.18.0.1", 3478),
    "issued_at": 0x65000000,
    "certificate": bytes.fromhex(CERTIFICATE_HEX),
}
ATTESTATION = {"tbs": ATTESTATION_TBS, "signature": b"\x88" * 64}
ATTESTATION_HEX = h(
    "01",  # version, constant 1
    "03 626f62",  # user_id "bob"
    "00",  # device_id ""
    "04 c6120005 9c40",  # observed 198.18.0.5:40000
    "04 c6120001 0d96",  # supernode 198.18.0.1:3478
    "0000000065000000",  # issued_at
    "00a6",  # certificate: 166 bytes, u16 prefix
    CERTIFICATE_HEX,
    "88" * 64,  # signature
)  # 1 + 4 + 1 + 7 + 7 + 8 + 2 + 166 + 64 = 260 bytes

# 900 s online (0x384), 72 h + 1 h findable: 262800 s = 0x40290.
PRESENCE_TBS = {
    "version": 1,
    "user_id": "bob",
    "certificate": bytes.fromhex(CERTIFICATE_HEX),
    "sequence": 7,
    "issued_at": 0x65000000,
    "online_until": 0x65000384,
    "expires": 0x65040290,
    "supernode": ("198.18.0.1", 3478),
    "supernode_key": b"\xab" * 32,
    "candidates": [
        {
            "kind": CandidateKind.HOST,
            "transport": Transport.UDP,
            "priority": 0x7EFFFFFF,
            "address": ("192.168.1.10", 5000),
        }
    ],
}
SIGNED_PRESENCE = {"tbs": PRESENCE_TBS, "signature": b"\x88" * 64}
SIGNED_PRESENCE_HEX = h(
    "01",  # version, constant 1
    "03 626f62",  # user_id "bob"
    "00a6",  # certificate: 166 bytes, u16 prefix
    CERTIFICATE_HEX,
    "0000000000000007",  # sequence
    "0000000065000000",  # issued_at
    "0000000065000384",  # online_until: issued_at + 900
    "0000000065040290",  # expires: issued_at + 262800
    "04 c6120001 0d96",  # supernode 198.18.0.1:3478
    "ab" * 32,  # supernode_key
    "01",  # one candidate, u8 count
    "01 01 7effffff 04 c0a8010a 1388",  # HOST, UDP, priority, 192.168.1.10:5000
    "88" * 64,  # signature
)  # 1 + 4 + 168 + 32 + 7 + 32 + 1 + 13 + 64 = 322 = 0x142 bytes

# 112 bytes that the DHT goldens carry as a record. DHT_STORE and DHT_VALUES hold a
# record as an opaque blob (the validator, not the wire, looks inside), and their
# layout did not change when the overlay's record became a SignedPresence, so their
# goldens keep these bytes: those of the presence layout before it.
DHT_RECORD_HEX = h(
    "03 626f62 0000 04 c6120001 0d96 01",
    HOST_CANDIDATE_HEX,
    "0000018000000000 0000000000000001",
    "88" * 64,
)

REVOCATIONS = {
    "issuer_key_id": bytes.fromhex("0807060504030201"),
    "version": 3,
    "issued_at": 0x65000000,
    "next_update": 0x65015180,  # a day later: 0x65000000 + 86400
    "serials": [5, 0x0102030405060708],
}
REVOCATIONS_HEX = h(
    "0807060504030201",  # issuer_key_id
    "0000000000000003",  # version
    "0000000065000000",  # issued_at
    "0000000065015180",  # next_update
    "0002",  # two serials, u16 count
    "0000000000000005",
    "0102030405060708",
)  # 8 + 8 + 8 + 8 + 2 + 16 = 50 bytes
SIGNED_REVOCATIONS_HEX = REVOCATIONS_HEX + "99" * 64  # 114 bytes

TURN_URI = "turn:198.18.0.20:3478?transport=udp"  # RFC 7065, 35 bytes

DHT_KEY = b"\xcd" * 32
NEAR_NODE = {"node_id": b"\x11" * 32, "address": ("198.18.0.1", 3478)}
FAR_NODE = {"node_id": b"\x22" * 32, "address": ("2001:db8::1", 40000)}

IM_TEXT = "h\u00e9llo \u2713"  # h, e-acute (c3 a9), llo, space, check mark (e2 9c 93)

# type: (body, flags, expected hex)
GOLDEN: dict[MsgType, tuple[dict[str, Any], int, str]] = {
    MsgType.HANDSHAKE_INIT: (
        {
            "pattern": NoisePattern.XX,
            "sender_index": 0x01020304,
            "cookie": bytes(16),
            "noise": b"\xaa\xbb",
        },
        0,
        h("ed9e 01 01 0000 0019", "01", "01020304", "00" * 16, "0002 aabb"),  # 1 + 4 + 16 + 4
    ),
    MsgType.HANDSHAKE_RESP: (
        {"sender_index": 0x0A0B0C0D, "receiver_index": 0x01020304, "noise": b""},
        0,
        h("ed9e 01 02 0000 000a", "0a0b0c0d", "01020304", "0000"),
    ),
    MsgType.HANDSHAKE_FINISH: (
        {"receiver_index": 0x0A0B0C0D, "noise": b"\x01\x02\x03"},
        0,
        h("ed9e 01 03 0000 0009", "0a0b0c0d", "0003 010203"),
    ),
    MsgType.COOKIE_REPLY: (
        {"receiver_index": 0x01020304, "cookie": CALL_ID},
        0,
        h("ed9e 01 04 0000 0014", "01020304", CALL_ID_HEX),
    ),
    MsgType.TRANSPORT: (
        {"receiver_index": 7, "counter": (1 << 32) + 5, "ciphertext": b"\xde\xad\xbe\xef"},
        0,
        h("ed9e 01 05 0000 0010", "00000007", "0000000100000005", "deadbeef"),
    ),
    MsgType.LOGIN_HELLO: (
        {
            "user_id": "alice",
            "device_id": "desk1",
            "sign_key": b"\x11" * 32,
            "dh_key": b"\x22" * 32,
            "client_version": "0.1.0",
        },
        0,
        h(
            "ed9e 01 10 0000 0052",  # 6 + 6 + 32 + 32 + 6 = 82
            "05 616c696365",  # "alice"
            "05 6465736b31",  # "desk1"
            "11" * 32,
            "22" * 32,
            "05 302e312e30",  # "0.1.0"
        ),
    ),
    MsgType.LOGIN_CHALLENGE: (
        {"nonce": b"\x33" * 32, "server_time_ms": 0x0123456789ABCDEF},
        0,
        h("ed9e 01 11 0000 0028", "33" * 32, "0123456789abcdef"),
    ),
    MsgType.LOGIN_PASSWORD: (
        {"password": "hunter2\u00e4"},
        0,
        h("ed9e 01 12 0000 000b", "0009 68756e74657232 c3a4"),  # u16 prefix: cap 256
    ),
    MsgType.LOGIN_DEVICE_PROOF: (
        {"signature": b"\x44" * 64},
        0,
        h("ed9e 01 13 0000 0040", "44" * 64),
    ),
    MsgType.LOGIN_RESULT: (
        {"status": ErrorCode.AUTH_FAILED, "certificate": b"", "detail": "no"},
        0,
        h("ed9e 01 14 0000 0007", "0040", "0000", "02 6e6f"),
    ),
    MsgType.CERTIFICATE: (
        {"certificate": bytes.fromhex(CERTIFICATE_HEX)},
        0,
        h("ed9e 01 15 0000 00a8", "00a6", CERTIFICATE_HEX),  # 2 + 166 = 168
    ),
    MsgType.LOGIN_REGISTER: (
        {"password": "s3cret"},
        0,
        h("ed9e 01 16 0000 0008", "0006 733363726574"),  # u16 prefix: cap 256
    ),
    MsgType.REVOCATION_FETCH: (
        {"known_version": 7},
        0,
        h("ed9e 01 17 0000 0008", "0000000000000007"),
    ),
    MsgType.REVOCATION_LIST: (
        {"revocations": REVOCATIONS, "signature": b"\x99" * 64},
        0,
        h("ed9e 01 18 0000 0072", SIGNED_REVOCATIONS_HEX),  # 114
    ),
    MsgType.RELAY_REQUEST: (
        {"ttl": 3600},
        0,
        h("ed9e 01 19 0000 0004", "00000e10"),
    ),
    MsgType.RELAY_CREDENTIALS: (
        {
            "username": "1700000000:alice",
            "password": "cGFzcw==",
            "expires": 1700000000,
            "uris": [TURN_URI],
        },
        0,
        h(
            "ed9e 01 1a 0000 0047",  # 17 + 9 + 8 + 1 + 36 = 71
            "10 31373030303030303030 3a 616c696365",  # "1700000000" ":" "alice"
            "08 6347467a63773d3d",  # "cGFzcw=="
            "000000006553f100",  # 1700000000
            "01",  # one uri
            "23 7475726e3a 3139382e31382e302e3230 3a33343738 3f7472616e73706f72743d756470",
        ),
    ),
    MsgType.DEVICE_KEYS_REQUEST: (
        {"user_id": "bob"},
        0,
        h("ed9e 01 1b 0000 0004", "03 626f62"),
    ),
    MsgType.DEVICE_KEYS: (
        {"user_id": "bob", "certificates": [bytes.fromhex(CERTIFICATE_HEX)]},
        0,
        h("ed9e 01 1c 0000 00ad", "03 626f62", "01", "00a6", CERTIFICATE_HEX),  # 4+1+2+166
    ),
    MsgType.PRESENCE_PUBLISH: (
        {"request_id": 42, "record": bytes.fromhex(SIGNED_PRESENCE_HEX)},
        0,
        h(
            "ed9e 01 20 0000 0148",  # 4 + 2 + 322 = 328
            "0000002a",  # request_id
            "0142",  # record: 322 bytes, u16 prefix
            SIGNED_PRESENCE_HEX,
        ),
    ),
    MsgType.PRESENCE_LOOKUP: (
        {"request_id": 42, "user_id": "bob"},
        0,
        h("ed9e 01 21 0000 0008", "0000002a", "03 626f62"),
    ),
    MsgType.PRESENCE_RESULT: (
        {
            "request_id": 42,
            "code": ErrorCode.OK,
            "stored": 0,
            "records": [bytes.fromhex(SIGNED_PRESENCE_HEX)],
        },
        0,
        h(
            "ed9e 01 22 0000 014c",  # 4 + 2 + 1 + 1 + (2 + 322) = 332
            "0000002a",  # request_id
            "0000",  # code OK
            "00",  # stored: 0, a lookup's answer
            "01",  # one record, u8 count
            "0142",  # 322 bytes, u16 prefix
            SIGNED_PRESENCE_HEX,
        ),
    ),
    MsgType.SEARCH: (
        {"request_id": 1, "query": "al", "max_results": 10},
        0,
        h("ed9e 01 23 0000 0008", "00000001", "02 616c", "0a"),
    ),
    MsgType.SEARCH_RESULT: (
        {
            "request_id": 1,
            "entries": [
                {"user_id": "alice", "display_name": "Alice", "online": True},
                {"user_id": "al", "display_name": "", "online": False},
            ],
        },
        0,
        h(
            "ed9e 01 24 0000 0017",  # 4 + 1 + 13 + 5 = 23
            "00000001",
            "02",
            "05 616c696365 05 416c696365 01",
            "02 616c 00 00",
        ),
    ),
    MsgType.DHT_PING: (
        {"request_id": 0x01020304},
        0,
        h("ed9e 01 25 0000 0004", "01020304"),
    ),
    MsgType.DHT_PONG: (
        {"request_id": 0x01020304, "load": 42},
        0,
        h("ed9e 01 26 0000 0005", "01020304", "2a"),  # load 42 %
    ),
    MsgType.DHT_FIND_NODE: (
        {"request_id": 7, "key": bytes(range(32))},
        0,
        h(
            "ed9e 01 27 0000 0024",
            "00000007",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),  # 4 + 32 = 36
    ),
    MsgType.DHT_FIND_VALUE: (
        {"request_id": 8, "key": DHT_KEY},
        0,
        h("ed9e 01 28 0000 0024", "00000008", "cd" * 32),
    ),
    MsgType.DHT_NODES: (
        {"request_id": 7, "contacts": [NEAR_NODE, FAR_NODE]},
        0,
        h(
            "ed9e 01 29 0000 005f",  # 4 + 1 + (32 + 7) + (32 + 19) = 95
            "00000007",
            "02",  # two contacts, u8 count
            "11" * 32,
            "04 c6120001 0d96",  # 198.18.0.1:3478
            "22" * 32,
            "06 20010db8000000000000000000000001 9c40",  # [2001:db8::1]:40000
        ),
    ),
    MsgType.DHT_VALUES: (
        {"request_id": 8, "records": [bytes.fromhex(DHT_RECORD_HEX), b""]},
        0,
        h(
            "ed9e 01 2a 0000 0079",  # 4 + 1 + (2 + 112) + 2 = 121
            "00000008",
            "02",  # two records, u8 count
            "0070",  # 112 bytes, u16 prefix
            DHT_RECORD_HEX,
            "0000",  # an empty record: the wire carries it, the validator refuses it
        ),
    ),
    MsgType.DHT_STORE: (
        {"request_id": 9, "key": DHT_KEY, "record": bytes.fromhex(DHT_RECORD_HEX)},
        0,
        h("ed9e 01 2b 0000 0096", "00000009", "cd" * 32, "0070", DHT_RECORD_HEX),  # 150
    ),
    MsgType.DHT_STORED: (
        {"request_id": 9, "code": ErrorCode.REPLAYED},
        0,
        h("ed9e 01 2c 0000 0006", "00000009", "0021"),
    ),
    MsgType.BUDDY_OP: (
        {"op": BuddyOp.ADD_REQUEST, "user_id": "bob", "note": "hi"},
        0,
        h("ed9e 01 30 0000 0008", "01", "03 626f62", "02 6869"),
    ),
    MsgType.BUDDY_SYNC: (
        {"since_version": 0},
        0,
        h("ed9e 01 31 0000 0008", "0000000000000000"),
    ),
    MsgType.BUDDY_LIST: (
        {
            "version": 5,
            "since_version": 0,
            "full": True,
            "more": False,
            "entries": [
                {
                    "user_id": "bob",
                    "state": BuddyState.ACCEPTED,
                    "display_name": "Bob",
                    "note": "hi",
                }
            ],
        },
        0,
        h(
            "ed9e 01 32 0000 001f",  # 8 + 8 + 1 + 1 + 1 + 12 = 31
            "0000000000000005",
            "0000000000000000",  # since_version
            "01",  # full
            "00",  # no more messages follow
            "01",  # one entry
            "03 626f62 03 03 426f62 02 6869",
        ),
    ),
    MsgType.CALL_INVITE: (
        {
            "call_id": CALL_ID,
            "caller": "alice",
            "callee": "bob",
            "candidates": [SRFLX_CANDIDATE],
            "codecs": [Codec.OPUS, Codec.PCMU],
            "ufrag": "abcd",
            "pwd": "0123456789abcdefghijkl",
        },
        0,
        h(
            "ed9e 01 40 0000 005e",  # 16 + 6 + 4 + 37 + 3 + 5 + 23 = 94
            CALL_ID_HEX,
            "05 616c696365",
            "03 626f62",
            "01",
            SRFLX_CANDIDATE_HEX,
            "02 01 02",  # codecs OPUS, PCMU
            "04 61626364",
            "16 30313233343536373839 6162636465666768696a6b6c",  # 22 bytes
        ),
    ),
    MsgType.CALL_RINGING: (
        {"call_id": CALL_ID},
        0,
        h("ed9e 01 41 0000 0010", CALL_ID_HEX),
    ),
    MsgType.CALL_ACCEPT: (
        {"call_id": CALL_ID, "candidates": [], "codec": Codec.OPUS, "ufrag": "wxyz", "pwd": ""},
        0,
        h("ed9e 01 42 0000 0018", CALL_ID_HEX, "00", "01", "04 7778797a", "00"),
    ),
    MsgType.CALL_REJECT: (
        {"call_id": CALL_ID, "reason": CallEndReason.BUSY, "detail": ""},
        0,
        h("ed9e 01 43 0000 0012", CALL_ID_HEX, "02", "00"),
    ),
    MsgType.CALL_BYE: (
        {"call_id": CALL_ID, "reason": CallEndReason.NORMAL, "detail": "bye"},
        0,
        h("ed9e 01 44 0000 0015", CALL_ID_HEX, "01", "03 627965"),
    ),
    MsgType.PATH_UPDATE: (
        {
            "call_id": CALL_ID,
            "local": HOST_CANDIDATE,
            "remote": RELAY_CANDIDATE,
            "path_kind": PathKind.RELAY_TCP,
        },
        0,
        h(
            "ed9e 01 45 0000 003b",  # 16 + 18 + 24 + 1 = 59
            CALL_ID_HEX,
            HOST_CANDIDATE_HEX,
            RELAY_CANDIDATE_HEX,
            "05",
        ),
    ),
    MsgType.SIGNAL_FORWARD: (
        {"to_user": "bob", "to_device": "", "payload": b"\xed\x9e\x01\x05"},
        0,
        h(
            "ed9e 01 46 0000 000b",  # 4 + 1 + 6 = 11
            "03 626f62",  # to_user "bob"
            "00",  # to_device empty: every device
            "0004 ed9e0105",  # payload, u16 prefix: the head of an edge TRANSPORT datagram
        ),
    ),
    MsgType.SIGNAL_RELAYED: (
        {
            "to_user": "bob",
            "to_device": "desk",
            "from_user": "alice",
            "from_device": "door",
            "from_address": ("198.18.0.7", 40000),
            "payload": b"\x01",
        },
        0,
        h(
            "ed9e 01 47 0000 001e",  # 4 + 5 + 6 + 5 + 7 + 3 = 30
            "03 626f62",  # to_user "bob"
            "04 6465736b",  # to_device "desk"
            "05 616c696365",  # from_user "alice"
            "04 646f6f72",  # from_device "door"
            "04 c6120007 9c40",  # from_address 198.18.0.7:40000
            "0001 01",  # payload, u16 prefix
        ),
    ),
    MsgType.DEVICE_COMMAND: (
        {"call_id": CALL_ID, "action": DeviceAction.OPEN_DOOR},
        0,
        h("ed9e 01 48 0000 0011", CALL_ID_HEX, "01"),  # 16 + 1 = 17; action OPEN_DOOR
    ),
    MsgType.ATTACH: (
        {"request_id": 3, "redirects": 1},
        0,
        h("ed9e 01 90 0000 0005", "00000003", "01"),
    ),
    MsgType.ATTACH_RESULT: (
        {
            "request_id": 3,
            "code": ErrorCode.BUSY,
            "load": 75,
            "alternatives": [
                {"address": ("198.18.0.1", 443), "rtt_ms": 12, "flags": 0},
            ],
        },
        0,
        h(
            "ed9e 01 91 0000 0012",  # 4 + 2 + 1 + 1 + 10 = 18
            "00000003",
            "0043",  # BUSY
            "4b",  # load 75 %
            "01",  # one alternative
            "04 c6120001 01bb",  # 198.18.0.1:443
            "000c",  # 12 ms
            "00",  # a supernode
        ),
    ),
    MsgType.HOSTCACHE_REQUEST: (
        {"request_id": 4, "offset": 48},
        0,
        h("ed9e 01 92 0000 0005", "00000004", "30"),
    ),
    MsgType.HOSTCACHE: (
        {
            "request_id": 4,
            "total": 50,
            "offset": 48,
            "entries": [
                {"address": ("2001:db8::1", 40000), "rtt_ms": 0xFFFF, "flags": 0},
                {"address": ("198.18.0.9", 443), "rtt_ms": 0xFFFF, "flags": 1},
            ],
        },
        0,
        h(
            "ed9e 01 93 0000 0027",  # 4 + 1 + 1 + 1 + 22 + 10 = 39
            "00000004",
            "32",  # total 50
            "30",  # offset 48
            "02",  # two entries
            "06 20010db8000000000000000000000001 9c40",
            "ffff",  # not measured
            "00",
            "04 c6120009 01bb",
            "ffff",
            "01",  # a login server
        ),
    ),
    MsgType.DETACH: (
        {"code": ErrorCode.UNAVAILABLE, "alternatives": []},
        0,
        h("ed9e 01 94 0000 0003", "0045", "00"),  # shutting down, nowhere in particular
    ),
    MsgType.LOGIN_TUNNEL_OPEN: (
        {"tunnel_id": 7},
        0,
        h("ed9e 01 a0 0000 0004", "00000007"),  # tunnel 7
    ),
    MsgType.LOGIN_TUNNEL_DATA: (
        {"tunnel_id": 7, "seq": 2, "ack": 1, "data": b"\x00\x2a"},
        0,
        h(
            "ed9e 01 a1 0000 0010",  # 4 + 4 + 4 + 2 + 2 = 16
            "00000007",  # tunnel 7
            "00000002",  # the third chunk
            "00000001",  # chunk 0 of the other direction arrived
            "0002 002a",  # two bytes, u16 prefix: the head of a Noise frame's length
        ),
    ),
    MsgType.LOGIN_TUNNEL_CLOSE: (
        {"tunnel_id": 7, "code": ErrorCode.BUSY},
        0,
        h("ed9e 01 a2 0000 0006", "00000007", "0043"),  # too many tunnels
    ),
    MsgType.INSTANT_MESSAGE: (
        {
            "message_id": b"\xab" * 16,
            "sender": "alice",
            "recipient": "bob",
            "sequence": 3,
            "sent_ms": 0x0123456789ABCDEF,
            "text": IM_TEXT,
        },
        HeaderFlag.ACK_REQUESTED,
        h(
            "ed9e 01 50 0001 0036",  # ACK_REQUESTED; 16 + 6 + 4 + 8 + 8 + 12 = 54
            "ab" * 16,
            "05 616c696365",
            "03 626f62",
            "0000000000000003",
            "0123456789abcdef",
            "000a 68 c3a9 6c6c6f 20 e29c93",  # u16 prefix: cap 4096
        ),
    ),
    MsgType.MESSAGE_RECEIPT: (
        {"message_id": b"\xab" * 16, "status": ReceiptStatus.READ},
        0,
        h("ed9e 01 51 0000 0011", "ab" * 16, "02"),
    ),
    MsgType.FILE_OFFER: (
        {
            "file_id": b"\xf0" * 16,
            "name": "a.txt",
            "size": 1000,
            "sha256": b"\x99" * 32,
            "chunk_size": 1024,
        },
        0,
        h(
            "ed9e 01 52 0000 0042",  # 16 + 6 + 8 + 32 + 4 = 66
            "f0" * 16,
            "05 612e747874",
            "00000000000003e8",
            "99" * 32,
            "00000400",
        ),
    ),
    MsgType.FILE_CHUNK: (
        {"file_id": b"\xf0" * 16, "offset": 1024, "data": b"xyz"},
        0,
        h("ed9e 01 53 0000 001d", "f0" * 16, "0000000000000400", "0003 78797a"),
    ),
    MsgType.FILE_ACK: (
        {"file_id": b"\xf0" * 16, "offset": 1027, "window": 65536},
        0,
        h("ed9e 01 54 0000 001c", "f0" * 16, "0000000000000403", "00010000"),
    ),
    MsgType.MEDIA_FRAME: (
        {
            "stream_id": 0,
            "codec": Codec.OPUS,
            "flags": 0x02,
            "sequence": 0xFFFE,
            "timestamp": 16000,
            "payload": b"\xf8\xff\xfe",
        },
        0,
        h("ed9e 01 60 0000 000c", "00 01 02 fffe 00003e80", "f8fffe"),
    ),
    MsgType.KEEPALIVE: (
        {"nonce": 0xCAFEBABE, "sent_ms": 0x1000, "echo": True},
        0,
        h("ed9e 01 61 0000 000d", "cafebabe", "0000000000001000", "01"),
    ),
    MsgType.MAILBOX_PUT: (
        {
            "recipient": "bob",
            "recipient_device": "desk1",
            "message_id": b"\xab" * 16,
            "kind": MailKind.VOICEMAIL,
            "sealed": b"\x01\x02\x03",
        },
        0,
        h(
            "ed9e 01 70 0000 0020",  # 4 + 6 + 16 + 1 + 5 = 32
            "03 626f62",
            "05 6465736b31",
            "ab" * 16,
            "02",  # VOICEMAIL
            "0003 010203",  # u16 prefix, as every blob
        ),
    ),
    MsgType.MAILBOX_STORED: (
        {"message_id": b"\xab" * 16, "item_id": 0x1122334455667788},
        0,
        h("ed9e 01 71 0000 0018", "ab" * 16, "1122334455667788"),
    ),
    MsgType.MAILBOX_FETCH: (
        {"max_items": 10},
        0,
        h("ed9e 01 72 0000 0001", "0a"),
    ),
    MsgType.MAILBOX_ITEM: (
        {
            "item_id": 9,
            "sender": "alice",
            "sender_device": "desk1",
            "message_id": b"\xab" * 16,
            "kind": MailKind.MESSAGE,
            "sealed": b"",
            "stored_ms": 0x0123456789ABCDEF,
            "remaining": 2,
        },
        0,
        h(
            "ed9e 01 73 0000 0033",  # 8 + 6 + 6 + 16 + 1 + 2 + 8 + 4 = 51
            "0000000000000009",
            "05 616c696365",
            "05 6465736b31",
            "ab" * 16,
            "01",  # MESSAGE
            "0000",  # empty blob
            "0123456789abcdef",
            "00000002",
        ),
    ),
    MsgType.MAILBOX_ACK: (
        {"item_ids": [9, 10]},
        0,
        h("ed9e 01 74 0000 0011", "02", "0000000000000009", "000000000000000a"),
    ),
    MsgType.MAILBOX_STATUS: (
        {"waiting": 3},
        0,
        h("ed9e 01 75 0000 0004", "00000003"),
    ),
    MsgType.ERROR: (
        {"code": ErrorCode.UNKNOWN_TYPE, "about_type": 0x99, "detail": ""},
        0,
        h("ed9e 01 7f 0000 0004", "0014", "99", "00"),
    ),
    MsgType.DIALBACK_REQUEST: (
        {"request_id": 0x01020304, "port": 40000},
        0,
        h("ed9e 01 80 0000 0006", "01020304", "9c40"),
    ),
    MsgType.DIALBACK_PROBE: (
        {"nonce": CALL_ID, "supernode_key_id": bytes.fromhex("0807060504030201")},
        0,
        h("ed9e 01 81 0000 0018", CALL_ID_HEX, "0807060504030201"),  # 16 + 8 = 24
    ),
    MsgType.DIALBACK_CONFIRM: (
        {"request_id": 7, "nonce": CALL_ID},
        0,
        h("ed9e 01 82 0000 0014", "00000007", CALL_ID_HEX),  # 4 + 16 = 20
    ),
    MsgType.DIALBACK_RESULT: (
        {
            "request_id": 7,
            "code": ErrorCode.OK,
            "reachable": True,
            "observed": ("198.18.0.5", 40000),
            "attestation": bytes.fromhex(ATTESTATION_HEX),
        },
        0,
        h(
            "ed9e 01 83 0000 0114",  # 4 + 2 + 1 + 7 + 2 + 260 = 276
            "00000007",
            "0000",  # OK
            "01",  # reachable
            "04 c6120005 9c40",  # observed 198.18.0.5:40000
            "0104",  # 260 bytes, u16 prefix
            ATTESTATION_HEX,
        ),
    ),
}


def test_every_message_type_has_a_golden() -> None:
    assert set(GOLDEN) == set(MsgType)


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_build_gives_the_golden_bytes(msg_type: MsgType) -> None:
    body, flags, expected = GOLDEN[msg_type]
    assert encode(msg_type, body, flags).hex() == expected


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_golden_parses_and_rebuilds_to_the_same_bytes(msg_type: MsgType) -> None:
    body, flags, expected = GOLDEN[msg_type]
    message = decode(bytes.fromhex(expected))
    assert message.type is msg_type
    assert message.flags == flags
    assert message.body == body
    assert encode(message.type, message.body, message.flags).hex() == expected


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_golden_headers_match_struct_pack(msg_type: MsgType) -> None:
    _, flags, expected = GOLDEN[msg_type]
    data = bytes.fromhex(expected)
    header = struct.pack(">2sBBHH", MAGIC, PROTOCOL_VERSION, msg_type, flags, len(data) - 8)
    assert data[:8] == header


def test_transport_by_struct_pack() -> None:
    body = struct.pack(">IQ", 7, (1 << 32) + 5) + b"\xde\xad\xbe\xef"
    header = struct.pack(">HBBHH", 0xED9E, 1, 0x05, 0, len(body))
    assert encode(MsgType.TRANSPORT, GOLDEN[MsgType.TRANSPORT][0]) == header + body


def test_media_frame_by_struct_pack() -> None:
    body = struct.pack(">BBBHI", 0, 1, 0x02, 0xFFFE, 16000) + b"\xf8\xff\xfe"
    header = struct.pack(">HBBHH", 0xED9E, 1, 0x60, 0, len(body))
    assert encode(MsgType.MEDIA_FRAME, GOLDEN[MsgType.MEDIA_FRAME][0]) == header + body


def test_file_ack_and_keepalive_by_struct_pack() -> None:
    ack = struct.pack(">16sQI", b"\xf0" * 16, 1027, 65536)
    keepalive = struct.pack(">IQB", 0xCAFEBABE, 0x1000, 1)
    assert encode(MsgType.FILE_ACK, GOLDEN[MsgType.FILE_ACK][0])[8:] == ack
    assert encode(MsgType.KEEPALIVE, GOLDEN[MsgType.KEEPALIVE][0])[8:] == keepalive


def test_candidate_by_struct_pack() -> None:
    address = struct.pack(">B4sH", 4, bytes([192, 168, 1, 10]), 5000)
    candidate = struct.pack(">BBII", 1, 1, (126 << 24) + (65535 << 8) + 255, 1) + address + b"\0"
    assert candidate.hex() == HOST_CANDIDATE_HEX


def test_dht_nodes_by_struct_pack() -> None:
    near = struct.pack(">32sB4sH", b"\x11" * 32, 4, bytes([198, 18, 0, 1]), 3478)
    far = struct.pack(
        ">32sB16sH", b"\x22" * 32, 6, bytes.fromhex("20010db8" + "00" * 11 + "01"), 40000
    )
    body = struct.pack(">IB", 7, 2) + near + far
    assert encode(MsgType.DHT_NODES, GOLDEN[MsgType.DHT_NODES][0])[8:] == body


def test_dht_store_by_struct_pack() -> None:
    record = bytes.fromhex(DHT_RECORD_HEX)
    body = struct.pack(">I32sH", 9, b"\xcd" * 32, len(record)) + record
    assert encode(MsgType.DHT_STORE, GOLDEN[MsgType.DHT_STORE][0])[8:] == body


def test_revocation_list_by_struct_pack() -> None:
    head = struct.pack(">8sQQQ", bytes.fromhex("0807060504030201"), 3, 0x65000000, 0x65015180)
    serials = struct.pack(">H2Q", 2, 5, 0x0102030405060708)
    body = head + serials + b"\x99" * 64
    assert encode(MsgType.REVOCATION_LIST, GOLDEN[MsgType.REVOCATION_LIST][0])[8:] == body


def test_mailbox_item_by_struct_pack() -> None:
    body = (
        struct.pack(">Q", 9)
        + b"\x05alice\x05desk1"
        + struct.pack(">16sBHQI", b"\xab" * 16, 1, 0, 0x0123456789ABCDEF, 2)
    )
    assert encode(MsgType.MAILBOX_ITEM, GOLDEN[MsgType.MAILBOX_ITEM][0])[8:] == body


def test_instant_message_text_is_utf8_with_a_u16_prefix() -> None:
    raw = IM_TEXT.encode("utf-8")
    expected_tail = struct.pack(">H", len(raw)) + raw
    data = encode(MsgType.INSTANT_MESSAGE, GOLDEN[MsgType.INSTANT_MESSAGE][0])
    assert data.endswith(expected_tail)
    assert len(raw) == 10


def test_certificate_golden() -> None:
    assert build_certificate(CERTIFICATE).hex() == CERTIFICATE_HEX
    parsed = parse_certificate(bytes.fromhex(CERTIFICATE_HEX))
    assert parsed == {"tbs": {**TBS, "version": 1}, "signature": b"\x77" * 64}
    assert build_certificate(parsed).hex() == CERTIFICATE_HEX


def test_signed_presence_golden() -> None:
    assert build_signed_presence(SIGNED_PRESENCE).hex() == SIGNED_PRESENCE_HEX
    parsed = parse_signed_presence(bytes.fromhex(SIGNED_PRESENCE_HEX))
    assert parsed == SIGNED_PRESENCE
    assert build_signed_presence(parsed).hex() == SIGNED_PRESENCE_HEX
    assert build_presence_tbs(PRESENCE_TBS).hex() == SIGNED_PRESENCE_HEX[: -2 * 64]


def test_presence_result_of_a_publish_by_struct_pack() -> None:
    body = {"request_id": 5, "code": ErrorCode.CERT_REVOKED, "stored": 0, "records": []}
    expected = struct.pack(">IHBB", 5, 0x34, 0, 0)
    assert encode(MsgType.PRESENCE_RESULT, body)[8:] == expected
    stored = {"request_id": 6, "code": ErrorCode.OK, "stored": 5, "records": []}
    assert encode(MsgType.PRESENCE_RESULT, stored)[8:] == struct.pack(">IHBB", 6, 0, 5, 0)
    assert decode(encode(MsgType.PRESENCE_RESULT, body)).body == body


def test_presence_publish_by_struct_pack() -> None:
    record = bytes.fromhex(SIGNED_PRESENCE_HEX)
    body = struct.pack(">IH", 42, len(record)) + record
    assert encode(MsgType.PRESENCE_PUBLISH, GOLDEN[MsgType.PRESENCE_PUBLISH][0])[8:] == body


def test_handshake_payload_golden() -> None:
    payload = {
        "certificate": bytes.fromhex(CERTIFICATE_HEX),
        "timestamp_ms": 0x0123456789ABCDEF,
        "features": 0,
    }
    expected = h("00a6", CERTIFICATE_HEX, "0123456789abcdef", "00000000")
    assert build_handshake_payload(payload).hex() == expected
    assert parse_handshake_payload(bytes.fromhex(expected)) == payload


def test_revocation_list_golden() -> None:
    assert build_revocation_list(REVOCATIONS).hex() == REVOCATIONS_HEX
    parsed = parse_revocation_list(bytes.fromhex(REVOCATIONS_HEX))
    assert parsed == REVOCATIONS
    assert build_revocation_list(parsed).hex() == REVOCATIONS_HEX


def test_signed_revocation_list_golden() -> None:
    signed = {"revocations": REVOCATIONS, "signature": b"\x99" * 64}
    assert build_signed_revocation_list(signed).hex() == SIGNED_REVOCATIONS_HEX
    parsed = parse_signed_revocation_list(bytes.fromhex(SIGNED_REVOCATIONS_HEX))
    assert parsed == signed
    assert build_signed_revocation_list(parsed).hex() == SIGNED_REVOCATIONS_HEX


def test_dialback_attestation_golden() -> None:
    assert build_dialback_attestation(ATTESTATION).hex() == ATTESTATION_HEX
    parsed = parse_dialback_attestation(bytes.fromhex(ATTESTATION_HEX))
    assert parsed == ATTESTATION
    assert build_dialback_attestation(parsed).hex() == ATTESTATION_HEX
    assert build_dialback_tbs(ATTESTATION_TBS).hex() == ATTESTATION_HEX[: -2 * 64]


def test_dialback_probe_is_smaller_than_any_request_that_causes_it() -> None:
    probe = encode(MsgType.DIALBACK_PROBE, GOLDEN[MsgType.DIALBACK_PROBE][0])
    request = encode(MsgType.DIALBACK_REQUEST, GOLDEN[MsgType.DIALBACK_REQUEST][0])
    # The request travels inside TRANSPORT: 8 + 12 bytes of header and 16 of AEAD tag.
    assert len(probe) == 32
    assert len(probe) < 8 + 12 + len(request) + 16


def test_dialback_result_of_a_refused_test_by_struct_pack() -> None:
    body = {
        "request_id": 9,
        "code": ErrorCode.RATE_LIMITED,
        "reachable": False,
        "observed": None,
        "attestation": b"",
    }
    assert encode(MsgType.DIALBACK_RESULT, body)[8:] == struct.pack(">IHBBH", 9, 0x44, 0, 0, 0)
    assert decode(encode(MsgType.DIALBACK_RESULT, body)).body == body
