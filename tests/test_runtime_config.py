"""Configuration loading: every error names file, key and line; atomic writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.runtime.config import MAX_CONFIG_BYTES, ConfigDoc, load, loads, write_atomic
from edge.runtime.errors import (
    AtomicWriteError,
    ConfigFileError,
    ConfigMissingKeyError,
    ConfigReadError,
    ConfigSyntaxError,
    ConfigTooLargeError,
    ConfigUnknownKeyError,
    ConfigValueError,
    RuntimeUsageError,
)
from edge.wire.codes import ErrorCode

AGENT = textwrap.dedent(
    '''\
    # an agent configuration
    name = "hall phone"
    level = "verbose"
    banner = """
    port = 1
    [not.a.table]
    still text \\""" here
    """
    note = \'\'\'
    x = 'y'
    \'\'\'
    [login]
    address = "198.18.0.1"
    port = 70000
    retries = 2.5
    secure = "yes"
    pin = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeFF"
    short_pin = "0011"
    odd_pin = "001122334455667788990aabbccddeeff00112233445566778899aabbccddeZZ"
    tls.cert = "certs/device.pem"
    peers = [
      "a", # a comment with key = value
      "]", 5,
    ]
    "media.codec" = "opus"
    inline = { port = "x" }

    [[servers]]
    address = "[2001:db8::1]:3478"

    [[servers]]
    address = "stun.example.org"
    tls = { pin = "zz" }
    [servers.extra]
    weight = -1
    '''
)


@pytest.fixture
def doc() -> ConfigDoc:
    return loads(AGENT, "agent.toml")


def message(exc: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc.value)


# ------------------------------------------------------------------ value errors


def test_int_out_of_range_names_file_line_and_key(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigValueError) as exc:
        doc.get_int("login.port", min=1, max=65535)
    assert message(exc) == (
        "agent.toml:14: key 'login.port': expected an integer from 1 to 65535, got 70000"
    )
    assert (exc.value.path, exc.value.key, exc.value.line) == ("agent.toml", "login.port", 14)
    assert exc.value.code is ErrorCode.MALFORMED
    assert isinstance(exc.value, ConfigError)


def test_int_refuses_other_types_including_booleans() -> None:
    doc = loads("a = true\nb = 1.5\n", "x.toml")
    with pytest.raises(ConfigValueError) as exc:
        doc.get_int("a")
    assert message(exc) == "x.toml:1: key 'a': expected an integer, got a boolean"
    with pytest.raises(ConfigValueError) as exc:
        doc.get_int("b", min=0)
    assert message(exc) == "x.toml:2: key 'b': expected an integer of at least 0, got a float"


def test_float_accepts_integers_and_checks_bounds() -> None:
    doc = loads("a = 5\nb = inf\nc = 0.25\n", "x.toml")
    assert doc.get_float("a") == 5.0
    with pytest.raises(ConfigValueError) as exc:
        doc.get_float("b")
    assert message(exc) == "x.toml:2: key 'b': expected a number, got inf"
    with pytest.raises(ConfigValueError) as exc:
        doc.get_float("c", min=0.5, max=10)
    assert message(exc) == "x.toml:3: key 'c': expected a number from 0.5 to 10, got 0.25"


def test_float_type_error(doc: ConfigDoc) -> None:
    assert doc.get_float("login.retries", max=3) == 2.5
    with pytest.raises(ConfigValueError) as exc:
        doc.get_float("login.address", max=3)
    assert message(exc) == (
        "agent.toml:13: key 'login.address': expected a number of at most 3, got a string"
    )


def test_bool_refuses_strings(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigValueError) as exc:
        doc.get_bool("login.secure")
    assert message(exc) == "agent.toml:16: key 'login.secure': expected true or false, got a string"


def test_str_length_and_type() -> None:
    doc = loads('a = "abcdef"\nb = 3\nc = ""\n', "x.toml")
    assert doc.get_str("a") == "abcdef"
    with pytest.raises(ConfigValueError) as exc:
        doc.get_str("a", max_length=4)
    assert message(exc) == (
        "x.toml:1: key 'a': expected a string of at most 4 characters, got 6 characters"
    )
    with pytest.raises(ConfigValueError) as exc:
        doc.get_str("c", min_length=1, max_length=9)
    assert message(exc) == (
        "x.toml:3: key 'c': expected a string of 1 to 9 characters, got 0 characters"
    )
    with pytest.raises(ConfigValueError) as exc:
        doc.get_str("b")
    assert message(exc) == "x.toml:2: key 'b': expected a string, got an integer"


def test_enum_lists_the_choices(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigValueError) as exc:
        doc.get_enum("level", ["debug", "info"])
    assert message(exc) == (
        'agent.toml:3: key \'level\': expected one of "debug", "info", got "verbose"'
    )
    with pytest.raises(ConfigValueError) as exc:
        doc.get_enum("level", {"warning", "error"})
    assert message(exc) == (
        'agent.toml:3: key \'level\': expected one of "error", "warning", got "verbose"'
    )
    assert doc.get_enum("level", ["verbose"]) == "verbose"


def test_hex_bytes(doc: ConfigDoc) -> None:
    assert doc.get_hex_bytes("login.pin", 32) == bytes.fromhex(
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    )
    with pytest.raises(ConfigValueError) as exc:
        doc.get_hex_bytes("login.short_pin", 32)
    assert message(exc) == (
        "agent.toml:18: key 'login.short_pin': expected 64 hex digits (32 bytes), got 4 characters"
    )
    with pytest.raises(ConfigValueError) as exc:
        doc.get_hex_bytes("login.odd_pin", 32)
    assert message(exc) == (
        "agent.toml:19: key 'login.odd_pin': expected 64 hex digits (32 bytes),"
        " got a non-hex character at position 63"
    )


def test_list_of_str_names_the_item(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigValueError) as exc:
        doc.get_list_of_str("login.peers")
    assert message(exc) == "agent.toml:21: key 'login.peers[2]': expected a string, got an integer"
    assert exc.value.key == "login.peers[2]"
    with pytest.raises(ConfigValueError) as exc:
        doc.get_list_of_str("login.peers", max_items=2)
    assert message(exc) == "agent.toml:21: key 'login.peers': expected at most 2 strings, got 3"


def test_inline_table_keys_report_the_line_of_their_table(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigValueError) as exc:
        doc.get_int("login.inline.port")
    assert (
        message(exc) == "agent.toml:26: key 'login.inline.port': expected an integer, got a string"
    )


# ------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.18.0.1:3478", ("198.18.0.1", 3478)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("[fe80::1%eth0]:5000", ("fe80::1%eth0", 5000)),
        ("login.example.org:80", ("login.example.org", 80)),
        ("login.example.org", ("login.example.org", 9000)),
        ("[::1]", ("::1", 9000)),
    ],
)
def test_address_forms(text: str, expected: tuple[str, int]) -> None:
    doc = loads(f'a = "{text}"\n', "x.toml")
    assert doc.get_address("a", default_port=9000) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2001:db8::1:443", "an IPv6 address needs brackets, as in [::1]:5000"),
        ("[2001:db8::1:443", "no closing ']'"),
        ("[2001:db8::zz]:443", "not a valid IPv6 address"),
        ("[::1]x", "unexpected text after ']'"),
        ("host:0", "the port is not from 1 to 65535"),
        ("host:+80", "the port is not a number"),
        ("host", "no port"),
        ("bad host:80", "not a valid host name"),
        ("300.1.2.3:80", "not a valid IPv4 address"),
        (":80", "not a valid host name"),
    ],
)
def test_address_errors(text: str, reason: str) -> None:
    doc = loads(f'\n[login]\naddress = "{text}"\n', "agent.toml")
    with pytest.raises(ConfigValueError) as exc:
        doc.get_address("login.address")
    assert message(exc) == (
        f"agent.toml:3: key 'login.address': expected host:port, got \"{text}\" ({reason})"
    )


# ------------------------------------------------------------------ missing keys, tables


def test_missing_key_names_its_table_and_line(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigMissingKeyError) as exc:
        doc.get_str("login.password")
    assert message(exc) == (
        "agent.toml: missing required key 'login.password' (in table [login] at line 12)"
    )
    assert (exc.value.key, exc.value.line, exc.value.code) == (
        "login.password",
        12,
        ErrorCode.NOT_FOUND,
    )


def test_missing_key_at_top_level_or_under_missing_table(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigMissingKeyError) as exc:
        doc.get_str("account")
    assert message(exc) == "agent.toml: missing required key 'account'"
    with pytest.raises(ConfigMissingKeyError) as exc:
        doc.get_table("audio").get_int("rate")
    assert message(exc) == "agent.toml: missing required key 'audio.rate'"
    assert exc.value.line is None


def test_missing_key_in_dotted_subtable(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigMissingKeyError) as exc:
        doc.get_table("login").get_path("tls.key")
    assert message(exc) == (
        "agent.toml: missing required key 'login.tls.key' (in table [login.tls] at line 20)"
    )


def test_defaults_are_returned_for_absent_keys(doc: ConfigDoc) -> None:
    assert doc.get_int("login.timeout", 5) == 5
    assert doc.get_str("login.user", None) is None
    assert doc.get_table("audio").get_bool("echo_cancel", True) is True
    assert doc.get_tables("relays") == []


def test_required_table(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigMissingKeyError) as exc:
        doc.get_table("audio", required=True)
    assert message(exc) == "agent.toml: missing required key 'audio'"
    with pytest.raises(ConfigValueError) as wrong:
        doc.get_table("name")
    assert message(wrong) == "agent.toml:2: key 'name': expected a table, got a string"


def test_arrays_of_tables_carry_their_index(doc: ConfigDoc) -> None:
    first, second = doc.get_tables("servers")
    assert first.get_address("address") == ("2001:db8::1", 3478)
    with pytest.raises(ConfigValueError) as exc:
        second.get_address("address")
    assert message(exc) == (
        "agent.toml:32: key 'servers[1].address': expected host:port,"
        ' got "stun.example.org" (no port)'
    )
    with pytest.raises(ConfigValueError) as exc:
        second.get_hex_bytes("tls.pin", 32)
    assert message(exc) == (
        "agent.toml:33: key 'servers[1].tls.pin': expected 64 hex digits (32 bytes),"
        " got 2 characters"
    )
    with pytest.raises(ConfigValueError) as exc:
        second.get_table("extra").get_int("weight", min=0)
    assert message(exc) == (
        "agent.toml:35: key 'servers[1].extra.weight': expected an integer of at least 0, got -1"
    )
    with pytest.raises(ConfigMissingKeyError) as missing:
        first.get_str("realm")
    assert message(missing) == (
        "agent.toml: missing required key 'servers[0].realm' (in [[servers]] at line 28)"
    )
    with pytest.raises(ConfigMissingKeyError) as missing:
        second.get_table("extra").get_str("realm")
    assert message(missing) == (
        "agent.toml: missing required key 'servers[1].extra.realm'"
        " (in table [servers.extra] at line 34)"
    )


def test_array_of_tables_type_errors() -> None:
    doc = loads("servers = 3\nmixed = [{a = 1}, 2]\n", "x.toml")
    with pytest.raises(ConfigValueError) as exc:
        doc.get_tables("servers")
    assert message(exc) == "x.toml:1: key 'servers': expected an array of tables, got an integer"
    with pytest.raises(ConfigValueError) as exc:
        doc.get_tables("mixed")
    assert message(exc) == "x.toml:2: key 'mixed[1]': expected a table, got an integer"


def test_quoted_keys_with_dots_are_reached_by_tuple(doc: ConfigDoc) -> None:
    assert doc.get_str(("login", "media.codec")) == "opus"
    with pytest.raises(ConfigValueError) as exc:
        doc.get_int(("login", "media.codec"))
    assert message(exc) == (
        "agent.toml:25: key 'login.\"media.codec\"': expected an integer, got a string"
    )


def test_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('key = "keys/device.key"\nabs = "/etc/edge/x"\nempty = ""\n')
    doc = load(config)
    assert doc.get_path("key") == tmp_path / "keys" / "device.key"
    assert doc.get_path("abs") == Path("/etc/edge/x")
    with pytest.raises(ConfigValueError) as exc:
        doc.get_path("empty")
    assert message(exc) == (
        f"{config}:3: key 'empty': expected a path, got an empty string or one with a NUL"
    )


def test_bad_key_argument_is_caller_misuse(doc: ConfigDoc) -> None:
    with pytest.raises(RuntimeUsageError):
        doc.get_str("login..port")


def test_caller_made_error_uses_the_same_format(doc: ConfigDoc) -> None:
    error = doc.get_table("login").error("port", "must differ from the media port")
    assert str(error) == "agent.toml:14: key 'login.port': must differ from the media port"


# ------------------------------------------------------------------ unknown keys


def test_check_unknown_reports_every_unknown_key_with_its_line(doc: ConfigDoc) -> None:
    with pytest.raises(ConfigUnknownKeyError) as exc:
        doc.get_table("login").check_unknown(
            {"address", "port", "pin", "short_pin", "odd_pin", "tls", "peers", "inline"}
        )
    assert message(exc) == (
        "agent.toml:15: unknown key 'login.retries'; "
        "agent.toml:16: unknown key 'login.secure'; "
        "agent.toml:25: unknown key 'login.\"media.codec\"'"
    )
    assert exc.value.unknown == (
        ("login.retries", 15),
        ("login.secure", 16),
        ('login."media.codec"', 25),
    )
    assert (exc.value.key, exc.value.line) == ("login.retries", 15)


def test_check_unknown_passes_when_all_are_known(doc: ConfigDoc) -> None:
    doc.check_unknown({"name", "level", "banner", "note", "login", "servers"})
    doc.get_table("absent").check_unknown(set())


# ------------------------------------------------------------------ the line scanner


def test_multiline_strings_and_arrays_do_not_confuse_lines() -> None:
    text = textwrap.dedent(
        '''\
        a = """
        b = 2
        \\"""
        [fake]
        """
        c = \'\'\'
        d = 'e'\'\'\'
        f = [
          "] = x", # ] and = in a comment
          [1, 2],
          """
        g = 1
          """,
        ]
        h = """one-line""" # trailing
        i = ""
        j = 1
        '''
    )
    doc = loads(text, "x.toml")
    assert doc.keys() == ["a", "c", "f", "h", "i", "j"]
    assert [doc.line_of(key) for key in doc] == [1, 6, 8, 15, 16, 17]


def test_crlf_and_header_spacing() -> None:
    doc = loads('a = 1\r\n[ "sec tion" . inner ]  # note\r\nb = "x"\r\n', "x.toml")
    assert doc.line_of(("sec tion", "inner", "b")) == 3
    assert doc.line_of(("sec tion", "inner")) == 2


def test_nested_arrays_of_tables_count_per_parent() -> None:
    text = textwrap.dedent(
        """\
        [[fruit]]
        name = "apple"
        [[fruit.variety]]
        name = "red"
        [[fruit.variety]]
        name = "green"
        [[fruit]]
        name = "plum"
        [[fruit.variety]]
        name = 7
        """
    )
    doc = loads(text, "x.toml")
    plum = doc.get_tables("fruit")[1]
    with pytest.raises(ConfigValueError) as exc:
        plum.get_tables("variety")[0].get_str("name")
    assert message(exc) == (
        "x.toml:10: key 'fruit[1].variety[0].name': expected a string, got an integer"
    )
    assert doc.get_tables("fruit")[0].get_tables("variety")[1].line_of("name") == 6


def test_super_table_defined_after_sub_table_gets_its_own_line() -> None:
    doc = loads("[a.b]\nc = 1\n[a]\nd = 2\n", "x.toml")
    assert doc.line_of("a") == 3
    assert doc.line_of("a.b") == 1


# ------------------------------------------------------------------ syntax and files


def test_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(ConfigSyntaxError) as exc:
        loads('a = 1\n[login]\nport = \nb = "x"\n', "agent.toml")
    assert message(exc) == "agent.toml:3:8: Invalid value"
    assert exc.value.line == 3


def test_syntax_error_at_end_of_file() -> None:
    with pytest.raises(ConfigSyntaxError) as exc:
        loads('a = 1\nb = "unterminated', "agent.toml")
    assert message(exc) == "agent.toml:2: Unterminated string (at end of file)"


def test_missing_file_names_the_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigReadError) as exc:
        load(path)
    assert message(exc) == f"{path}: cannot read: No such file or directory"
    with pytest.raises(ConfigReadError) as exc:
        load(tmp_path)
    assert message(exc) == f"{tmp_path}: cannot read: Is a directory"


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'a = 1\nb = "caf\xe9"\n')
    with pytest.raises(ConfigSyntaxError) as exc:
        load(path)
    assert message(exc) == f"{path}:2: not valid UTF-8 (byte 0xe9)"


def test_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigTooLargeError) as exc:
        load(path)
    assert message(exc) == f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not a configuration file"
    assert exc.value.code is ErrorCode.OVERSIZED
    with pytest.raises(ConfigTooLargeError):
        loads("#" * (MAX_CONFIG_BYTES + 1), "serial")


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    doc = load(path)
    assert doc.name == str(path)
    assert doc.get_str("name") == "hall phone"
    assert isinstance(doc.data["login"], dict)


def test_all_config_errors_share_one_base() -> None:
    for kind in (ConfigReadError, ConfigSyntaxError, ConfigValueError, ConfigTooLargeError):
        assert issubclass(kind, ConfigFileError)


# ------------------------------------------------------------------ atomic writes


def test_write_atomic_creates_with_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    write_atomic(path, b"first")
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.key"]


def test_write_atomic_refuses_text_before_touching_anything(tmp_path: Path) -> None:
    path = tmp_path / "state.toml"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeUsageError):
        write_atomic(path, "new")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.toml"]


def test_write_atomic_failed_rename_keeps_the_target(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(AtomicWriteError) as exc:
        write_atomic(target, b"data")
    assert message(exc) == f"{target}: cannot rename into place: Is a directory"
    assert (target / "inside").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


FILE_SIZE_LIMITED_WRITE = """
import resource, signal, sys
from pathlib import Path
from edge.runtime.config import write_atomic
from edge.runtime.errors import AtomicWriteError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_atomic(Path(sys.argv[1]), b"n" * 100_000)
except AtomicWriteError as exc:
    print(exc)
    sys.exit(3)
"""


def test_write_atomic_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    # The kernel refuses to grow a file past RLIMIT_FSIZE (even for root), so
    # the write fails half-way, after the temporary file exists.
    path = tmp_path / "hostcache.bin"
    path.write_bytes(b"old content")
    result = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED_WRITE, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"{path}: cannot write: File too large"
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostcache.bin"]


def test_list_of_addresses_names_the_bad_item() -> None:
    doc = loads('[net]\nservers = ["198.18.0.1:3478", "[2001:db8::1]:443", "nohost"]\n', "a.toml")
    with pytest.raises(ConfigValueError) as info:
        doc.get_list_of_addresses("net.servers")
    assert str(info.value).startswith("a.toml:2: key 'net.servers[2]': expected host:port")
    ok = loads('listen = ["0.0.0.0:0", "[::]:443"]\n', "b.toml")
    assert ok.get_list_of_addresses("listen", any_port=True) == [("0.0.0.0", 0), ("::", 443)]
    with pytest.raises(ConfigValueError, match="from 1 to 65535"):
        ok.get_list_of_addresses("listen")
