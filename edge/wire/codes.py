"""Numbers that travel on the wire: message types and error codes.

Kept free of imports so that every package (errors included) can name a code
without pulling in the construct declarations.
"""

from enum import IntEnum

PROTOCOL_VERSION = 1
"""The one version this build speaks; a peer with another gets ``UNSUPPORTED_VERSION``."""

MAGIC = b"\xed\x9e"
"""First two bytes of every edge datagram and frame.

0xED sits outside the ranges RFC 7983 gives to STUN (0-3), TURN ChannelData
(64-79), DTLS and RTP, so one UDP port can carry STUN, TURN and edge at once.
"""


class MsgType(IntEnum):
    """The ``type`` byte of the header; selects the body declaration."""

    # Session layer (plaintext header, Noise inside) - 0x0_
    HANDSHAKE_INIT = 0x01
    HANDSHAKE_RESP = 0x02
    HANDSHAKE_FINISH = 0x03
    COOKIE_REPLY = 0x04
    TRANSPORT = 0x05
    # Login and authentication - 0x1_
    LOGIN_HELLO = 0x10
    LOGIN_CHALLENGE = 0x11
    LOGIN_PASSWORD = 0x12
    LOGIN_DEVICE_PROOF = 0x13
    LOGIN_RESULT = 0x14
    CERTIFICATE = 0x15
    LOGIN_REGISTER = 0x16
    REVOCATION_FETCH = 0x17
    REVOCATION_LIST = 0x18
    RELAY_REQUEST = 0x19
    RELAY_CREDENTIALS = 0x1A
    DEVICE_KEYS_REQUEST = 0x1B
    DEVICE_KEYS = 0x1C
    # Presence and search - 0x2_
    PRESENCE_PUBLISH = 0x20
    PRESENCE_LOOKUP = 0x21
    PRESENCE_RESULT = 0x22
    SEARCH = 0x23
    SEARCH_RESULT = 0x24
    # Supernode overlay (Kademlia RPCs between supernodes) - 0x25 to 0x2C
    DHT_PING = 0x25
    DHT_PONG = 0x26
    DHT_FIND_NODE = 0x27
    DHT_FIND_VALUE = 0x28
    DHT_NODES = 0x29
    DHT_VALUES = 0x2A
    DHT_STORE = 0x2B
    DHT_STORED = 0x2C
    # Buddy list - 0x3_
    BUDDY_OP = 0x30
    BUDDY_SYNC = 0x31
    BUDDY_LIST = 0x32
    # Call signalling - 0x4_
    CALL_INVITE = 0x40
    CALL_RINGING = 0x41
    CALL_ACCEPT = 0x42
    CALL_REJECT = 0x43
    CALL_BYE = 0x44
    PATH_UPDATE = 0x45
    SIGNAL_FORWARD = 0x46
    SIGNAL_RELAYED = 0x47
    DEVICE_COMMAND = 0x48
    # Messages and files - 0x5_
    INSTANT_MESSAGE = 0x50
    MESSAGE_RECEIPT = 0x51
    FILE_OFFER = 0x52
    FILE_CHUNK = 0x53
    FILE_ACK = 0x54
    # Media and liveness - 0x6_
    MEDIA_FRAME = 0x60
    KEEPALIVE = 0x61
    # Offline mailbox on the login server - 0x7_ (ERROR keeps 0x7F)
    MAILBOX_PUT = 0x70
    MAILBOX_STORED = 0x71
    MAILBOX_FETCH = 0x72
    MAILBOX_ITEM = 0x73
    MAILBOX_ACK = 0x74
    MAILBOX_STATUS = 0x75
    ERROR = 0x7F
    # Promotion: dial-back reachability tests of a would-be supernode - 0x8_
    DIALBACK_REQUEST = 0x80
    DIALBACK_PROBE = 0x81
    DIALBACK_CONFIRM = 0x82
    DIALBACK_RESULT = 0x83
    # Attaching to a supernode, and its host cache - 0x9_
    ATTACH = 0x90
    ATTACH_RESULT = 0x91
    HOSTCACHE_REQUEST = 0x92
    HOSTCACHE = 0x93
    DETACH = 0x94
    # Logging in through the supernode when only it is reachable - 0xA_
    LOGIN_TUNNEL_OPEN = 0xA0
    LOGIN_TUNNEL_DATA = 0xA1
    LOGIN_TUNNEL_CLOSE = 0xA2


class ErrorCode(IntEnum):
    """Carried in ERROR messages and on every :class:`edge.errors.EdgeError`."""

    OK = 0
    INTERNAL = 1
    # Malformed input - 0x1_
    TRUNCATED = 0x10
    OVERSIZED = 0x11
    BAD_MAGIC = 0x12
    UNSUPPORTED_VERSION = 0x13
    UNKNOWN_TYPE = 0x14
    MALFORMED = 0x15
    # Session and crypto - 0x2_
    BAD_MAC = 0x20
    REPLAYED = 0x21
    HANDSHAKE_FAILED = 0x22
    COOKIE_REQUIRED = 0x23
    UNKNOWN_SESSION = 0x24
    SESSION_EXPIRED = 0x25
    # Certificates - 0x3_
    CERT_EXPIRED = 0x30
    CERT_NOT_YET_VALID = 0x31
    CERT_UNKNOWN_ISSUER = 0x32
    CERT_BAD_SIGNATURE = 0x33
    CERT_REVOKED = 0x34
    CERT_KEY_MISMATCH = 0x35
    REVOCATIONS_STALE = 0x36
    # Application - 0x4_
    AUTH_FAILED = 0x40
    NOT_FOUND = 0x41
    FORBIDDEN = 0x42
    BUSY = 0x43
    RATE_LIMITED = 0x44
    UNAVAILABLE = 0x45


class NoisePattern(IntEnum):
    """The Noise handshake pattern named in HANDSHAKE_INIT.

    XX when the initiator does not know the responder's static key yet (first
    contact), IK when it does (a pinned login server, a peer whose certificate
    came with its presence record): one round trip instead of one and a half.
    """

    XX = 1
    IK = 2
