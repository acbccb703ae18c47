"""The device agent's configuration: one TOML file, checked whole before anything starts.

Every section and key is listed here with its default; an unknown key is a
mistake (a typo would otherwise be silently ignored), and every wrong value is
reported as ``FILE:LINE: key 'section.key': reason``. Paths are relative to the
configuration file's folder.

```toml
[account]
user_id = "alice"
device_id = "desk-1"
password_file = ""             # read once, to enrol, while the device has no certificate

[login]
address = "login.example.net:443"
server_key = "<64 hex digits: the login server's Noise key, pinned>"
issuer_key = "<64 hex digits: the key that signs certificates>"

[supernodes]
bootstrap = ["198.18.0.20:33033", "198.18.0.21:33033"]

[[turn]]                       # optional standard TURN servers (relay fallback)
uri = "turn:relay.example.net:3478?transport=udp"
username = ""                  # empty: ask the login server for credentials
password = ""

[state]
dir = "/var/lib/edge/agent"    # keys, certificate, host cache, buddy cache
port = 0                       # 0: pick a random port at first start, then keep it
control_socket = "/run/edge/agent.sock"   # where `edge ctl` finds this agent

[audio]
capture = "default"            # an ALSA PCM, "file:PATH.wav" (16-bit mono, to play), or "none"
playback = "default"           # an ALSA PCM, "file:PATH.wav" (what is heard), or "none"
rate = 16000
echo_cancel = false
codecs = ["opus", "pcmu", "pcma"]   # what calls may use (pcmu/pcma: G.711); a call placed
                               # offers them in this order, an answered one takes the
                               # caller's first that is listed here

[board]
profile = ""                   # a board profile from hw/, or empty for none

[policy]
auto_answer = []               # user ids whose calls are answered at once
supernode = "never"            # "never" | "auto" | "always": promotion is opt-in
bandwidth_kbps = 0             # the line's speed each way, as the operator knows it
promotion_hold_seconds = 600   # conditions must hold this long to promote or demote
```
"""

from dataclasses import dataclass, field
from pathlib import Path

from edge.media.pipeline import FILE_PREFIX, NONE, is_device
from edge.media.wav import WavError, inspect
from edge.runtime.config import ConfigDoc, load
from edge.sansio import Address
from edge.wire.messages import Codec

SECTIONS = {"account", "login", "supernodes", "turn", "state", "audio", "board", "policy"}
PROMOTION = ("never", "auto", "always")
AUDIO_RATES = (8000, 16000, 32000, 44100, 48000)
CODECS = {"opus": Codec.OPUS, "pcmu": Codec.PCMU, "pcma": Codec.PCMA}
"""The ``[audio] codecs`` names: Opus, and G.711 μ-law and A-law."""
MAX_BOOTSTRAP = 200
MAX_TURN = 8
MAX_AUTO_ANSWER = 64
ID_MAX = 64


@dataclass(frozen=True)
class TurnServer:
    uri: str
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class AgentConfig:
    user_id: str
    device_id: str
    login_address: Address
    server_key: bytes
    issuer_key: bytes
    bootstrap: tuple[Address, ...] = ()
    turn: tuple[TurnServer, ...] = ()
    state_dir: Path = Path("/var/lib/edge/agent")
    port: int = 0
    control_socket: Path = Path("/run/edge/agent.sock")
    password_file: Path | None = None
    capture: str = "default"
    playback: str = "default"
    rate: int = 16000
    echo_cancel: bool = False
    codecs: tuple[Codec, ...] = (Codec.OPUS, Codec.PCMU, Codec.PCMA)
    """What this device's calls may use, in the order its invitations offer them."""
    board_profile: Path | None = None
    auto_answer: frozenset[str] = field(default_factory=frozenset)
    supernode: str = "never"
    bandwidth_kbps: int = 0
    promotion_hold: float = 600.0


def read(path: Path) -> AgentConfig:
    """The whole configuration, or the first error found in it."""
    return from_doc(load(path))


def from_doc(doc: ConfigDoc) -> AgentConfig:
    doc.check_unknown(SECTIONS)
    account = _section(doc, "account", {"user_id", "device_id", "password_file"})
    login = _section(doc, "login", {"address", "server_key", "issuer_key"})
    state = _section(doc, "state", {"dir", "port", "control_socket"})
    audio = _section(doc, "audio", {"capture", "playback", "rate", "echo_cancel", "codecs"})
    policy = _section(
        doc,
        "policy",
        {"auto_answer", "supernode", "bandwidth_kbps", "promotion_hold_seconds"},
    )
    return AgentConfig(
        user_id=account.get_str("user_id", min_length=1, max_length=ID_MAX),
        device_id=account.get_str("device_id", min_length=1, max_length=ID_MAX),
        login_address=login.get_address("address", default_port=443),
        server_key=login.get_hex_bytes("server_key", 32),
        issuer_key=login.get_hex_bytes("issuer_key", 32),
        bootstrap=_bootstrap(doc),
        turn=_turn(doc),
        state_dir=state.get_path("dir", Path("/var/lib/edge/agent")),
        port=state.get_int("port", 0, min=0, max=65535),
        control_socket=state.get_path("control_socket", Path("/run/edge/agent.sock")),
        password_file=account.get_path("password_file", None),
        capture=_audio_end(audio, "capture"),
        playback=_audio_end(audio, "playback"),
        rate=_rate(audio),
        echo_cancel=audio.get_bool("echo_cancel", False),
        codecs=_codecs(audio),
        board_profile=_section(doc, "board", {"profile"}).get_path("profile", None),
        auto_answer=frozenset(
            policy.get_list_of_str("auto_answer", [], max_items=MAX_AUTO_ANSWER, max_length=ID_MAX)
        ),
        supernode=policy.get_enum("supernode", PROMOTION, "never"),
        bandwidth_kbps=policy.get_int("bandwidth_kbps", 0, min=0, max=10_000_000),
        promotion_hold=policy.get_float("promotion_hold_seconds", 600.0, min=1.0, max=86400.0),
    )


def _section(doc: ConfigDoc, name: str, keys: set[str]) -> ConfigDoc:
    table = doc.get_table(name)
    table.check_unknown(keys)
    return table


def _bootstrap(doc: ConfigDoc) -> tuple[Address, ...]:
    table = _section(doc, "supernodes", {"bootstrap"})
    return tuple(table.get_list_of_addresses("bootstrap", [], max_items=MAX_BOOTSTRAP))


def _turn(doc: ConfigDoc) -> tuple[TurnServer, ...]:
    servers = []
    for table in doc.get_tables("turn", max_items=MAX_TURN):
        table.check_unknown({"uri", "username", "password"})
        uri = table.get_str("uri", min_length=6, max_length=255)
        if not uri.startswith(("turn:", "turns:")):
            raise table.error("uri", f"expected a turn: or turns: URI (RFC 7065), got {uri!r}")
        servers.append(
            TurnServer(
                uri,
                table.get_str("username", "", max_length=128),
                table.get_str("password", "", max_length=128),
            )
        )
    return tuple(servers)


def _rate(audio: ConfigDoc) -> int:
    rate = audio.get_int("rate", 16000)
    if rate not in AUDIO_RATES:
        raise audio.error("rate", f"expected one of {', '.join(map(str, AUDIO_RATES))}, got {rate}")
    return rate


def _codecs(audio: ConfigDoc) -> tuple[Codec, ...]:
    """The codecs named, in the order written: at least one, each known, none twice."""
    names = audio.get_list_of_str("codecs", list(CODECS), max_items=len(CODECS), max_length=16)
    if not names:
        raise audio.error("codecs", "expected at least one codec, got none")
    for name in names:
        if name not in CODECS:
            known = ", ".join(f'"{known}"' for known in CODECS)
            raise audio.error("codecs", f"unknown codec {name!r}: expected {known}")
    if len(set(names)) != len(names):
        raise audio.error("codecs", f"a codec is named twice in {names}")
    return tuple(CODECS[name] for name in names)


def _audio_end(audio: ConfigDoc, key: str) -> str:
    """A sound device's name as written, or ``file:`` and the absolute path of a WAV
    file: one to play (it must exist and be 16-bit mono) or to record to (its folder
    must exist)."""
    spec = audio.get_str(key, "default", min_length=1, max_length=255)
    if spec == NONE:
        return spec
    if is_device(spec):
        # PortAudio lists ALSA devices by name; one with control characters is a typo.
        if not spec.isprintable():
            raise audio.error(key, f"expected an ALSA device name, got {spec!r}")
        return spec
    written = spec.removeprefix(FILE_PREFIX)
    if not written or "\0" in written:
        raise audio.error(key, f'expected "{FILE_PREFIX}PATH.wav", got {spec!r}')
    path = Path(written)
    # Relative to the configuration file's folder, as every path here is.
    base = audio._source.base_dir
    if base is not None and not path.is_absolute():
        path = base / path
    if key == "capture":
        try:
            inspect(path)
        except WavError as exc:
            raise audio.error(key, f"cannot play it: {exc}") from None
    elif not path.parent.is_dir():
        raise audio.error(key, f"cannot record to {path}: no folder {path.parent}")
    elif path.is_dir():
        raise audio.error(key, f"cannot record to {path}: it is a folder")
    return f"{FILE_PREFIX}{path}"
