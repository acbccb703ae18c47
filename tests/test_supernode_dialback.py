"""The supernode's side of dial-back tests, and attestations, in memory.

A test is driven through the real codec (encode, then decode) as it would
arrive in a session; the probe datagram is checked as it would leave the
probe socket. Time is ``now`` from 0, Unix time ``WALL + now``.
"""

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.crypto.cert import TrustStore
from edge.crypto.keys import IssuerKey, key_id
from edge.errors import LocalError
from edge.sansio import Address
from edge.session.handshake import Identity
from edge.supernode.dialback import (
    DialbackLimits,
    DialbackService,
    Requester,
    SendProbe,
    SendResult,
    sign_attestation,
    verify_attestation,
)
from edge.supernode.errors import (
    AttestationBadSignature,
    AttestationCertificateRefused,
    AttestationSignerRefused,
    AttestationStale,
    AttestationWrongClient,
    MalformedAttestation,
    SupernodeIdentityError,
)
from edge.wire.codes import ErrorCode, MsgType
from edge.wire.messages import Message, decode, encode
from tests.sessions import WALL, identity, seeded

ISSUER = IssuerKey.generate()
TRUST = TrustStore([ISSUER.public])
ALICE = Requester(index=7, user_id="alice", device_id="desk-1", address=("198.18.1.5", 40001))
PORT = 40000


@dataclass
class Supernode:
    """A supernode's identity and dial-back service at ``address``."""

    ident: Identity
    service: DialbackService
    address: Address


def supernode(
    address: Address = ("198.18.0.1", 33033),
    *,
    user_id: str = "sn-1",
    limits: DialbackLimits | None = None,
    seed: int = 1,
) -> Supernode:
    ident = identity(ISSUER, user_id, device_id="supernode", end=WALL + 30 * 86400)
    service = DialbackService(
        ident.keys.sign,
        ident.certificate,
        address,
        limits=limits,
        wall_offset=WALL,
        token=seeded(seed),
    )
    return Supernode(ident, service, address)


def message(msg_type: MsgType, body: dict[str, Any]) -> Message:
    """As the session hands it over: encoded, decrypted, decoded."""
    return decode(encode(msg_type, body))


def answer(sn: Supernode) -> Any:
    """The last action the service queued: the answer to what it was just given
    (earlier ones, such as a timeout the same call noticed, are dropped)."""
    actions = []
    while (action := sn.service.next_action()) is not None:
        actions.append(action)
    return actions[-1]


def ask(sn: Supernode, who: Requester, request_id: int, now: float, port: int = PORT) -> Any:
    body = {"request_id": request_id, "port": port}
    sn.service.receive(who, message(MsgType.DIALBACK_REQUEST, body), now)
    return answer(sn)


def confirm(sn: Supernode, who: Requester, request_id: int, nonce: bytes, now: float) -> Any:
    body = {"request_id": request_id, "nonce": nonce}
    sn.service.receive(who, message(MsgType.DIALBACK_CONFIRM, body), now)
    return answer(sn)


def probe_nonce(action: Any) -> bytes:
    assert isinstance(action, SendProbe)
    probe = decode(action.datagram)
    assert probe.type is MsgType.DIALBACK_PROBE
    return bytes(probe.body.nonce)


def result_body(action: Any) -> Any:
    """The DIALBACK_RESULT as the client decodes it."""
    assert isinstance(action, SendResult)
    return decode(encode(MsgType.DIALBACK_RESULT, action.body())).body


def attest(sn: Supernode, *, now: float = 0.0, who: Requester = ALICE) -> bytes:
    """A whole successful test; the attestation's bytes."""
    nonce = probe_nonce(ask(sn, who, 1, now))
    body = result_body(confirm(sn, who, 1, nonce, now + 0.1))
    assert body.reachable
    return bytes(body.attestation)


# -- the exchange


def test_probe_goes_from_the_probe_socket_to_the_session_ip_and_the_named_port() -> None:
    sn = supernode()
    action = ask(sn, ALICE, 1, 0.0)
    assert isinstance(action, SendProbe)
    assert action.address == ("198.18.1.5", PORT)
    probe = decode(action.datagram)
    assert probe.body.supernode_key_id == key_id(sn.ident.keys.sign_public)
    assert len(action.datagram) == 32  # header 8, nonce 16, key id 8: nothing to amplify
    assert sn.service.next_action() is None
    assert sn.service.get_timer() == 5.0


def test_right_nonce_in_time_gives_a_signed_attestation() -> None:
    sn = supernode()
    nonce = probe_nonce(ask(sn, ALICE, 9, 0.0))
    body = result_body(confirm(sn, ALICE, 9, nonce, 1.5))
    assert body.request_id == 9
    assert body.code == ErrorCode.OK
    assert body.reachable is True
    assert body.observed == ("198.18.1.5", PORT)
    verified = verify_attestation(
        bytes(body.attestation), TRUST, WALL + 2, user_id="alice", device_id="desk-1"
    )
    assert verified.observed == ("198.18.1.5", PORT)
    assert verified.supernode == sn.address
    assert verified.issued_at == int(WALL + 1.5)
    assert verified.signer.sign_key == sn.ident.keys.sign_public
    assert sn.service.get_timer() is None
    assert sn.service.counts["reachable"] == 1


def test_confirm_may_come_from_the_session_after_it_moved() -> None:
    sn = supernode()
    nonce = probe_nonce(ask(sn, ALICE, 1, 0.0))
    moved = Requester(8, "alice", "desk-1", ("198.18.1.99", 5000))
    action = confirm(sn, moved, 1, nonce, 0.5)
    assert isinstance(action, SendResult)
    assert action.index == 8
    assert action.reachable
    assert action.observed == ("198.18.1.5", PORT)  # where the probe went, not where it is now


def test_forged_nonce_ends_the_test_unreachable() -> None:
    sn = supernode()
    nonce = probe_nonce(ask(sn, ALICE, 1, 0.0))
    forged = bytes(b ^ 1 for b in nonce)
    wrong = confirm(sn, ALICE, 1, forged, 0.5)
    assert wrong == SendResult(ALICE.index, 1, ErrorCode.OK, False, ("198.18.1.5", PORT))
    # One try only: the right nonce afterwards finds no test.
    again = confirm(sn, ALICE, 1, nonce, 0.6)
    assert again == SendResult(ALICE.index, 1, ErrorCode.OK, False, None)
    assert sn.service.counts["wrong-nonce"] == 1
    assert sn.service.counts["late"] == 1
    assert result_body(wrong).attestation == b""


def test_another_device_cannot_complete_a_test() -> None:
    sn = supernode()
    nonce = probe_nonce(ask(sn, ALICE, 1, 0.0))
    mallory = Requester(3, "mallory", "desk-1", ("198.18.1.5", 40001))
    assert confirm(sn, mallory, 1, nonce, 0.1) == SendResult(3, 1, ErrorCode.OK, False, None)
    assert confirm(sn, ALICE, 1, nonce, 0.2).reachable  # alice's test still runs


def test_wrong_request_id_is_late() -> None:
    sn = supernode()
    nonce = probe_nonce(ask(sn, ALICE, 1, 0.0))
    assert confirm(sn, ALICE, 2, nonce, 0.1) == SendResult(ALICE.index, 2, ErrorCode.OK)


def test_no_confirm_in_time_is_unreachable() -> None:
    sn = supernode()
    ask(sn, ALICE, 4, 0.0)
    sn.service.handle_timer(4.9)
    assert sn.service.next_action() is None
    sn.service.handle_timer(5.0)
    assert sn.service.next_action() == SendResult(
        ALICE.index, 4, ErrorCode.OK, False, ("198.18.1.5", PORT)
    )
    assert sn.service.get_timer() is None
    assert sn.service.counts["timeout"] == 1


def test_confirm_after_the_deadline_is_answered_as_a_timeout_then_late() -> None:
    sn = supernode()
    nonce = probe_nonce(ask(sn, ALICE, 4, 0.0))
    sn.service.receive(
        ALICE, message(MsgType.DIALBACK_CONFIRM, {"request_id": 4, "nonce": nonce}), 6.0
    )
    timeout, late = sn.service.next_action(), sn.service.next_action()
    assert timeout == SendResult(ALICE.index, 4, ErrorCode.OK, False, ("198.18.1.5", PORT))
    assert late == SendResult(ALICE.index, 4, ErrorCode.OK, False, None)
    assert sn.service.counts["reachable"] == 0


def test_one_test_per_device_per_interval() -> None:
    sn = supernode()
    ask(sn, ALICE, 1, 0.0)
    refused = ask(sn, ALICE, 2, 30.0)
    assert refused == SendResult(ALICE.index, 2, ErrorCode.RATE_LIMITED)
    assert result_body(refused).observed is None
    other_device = Requester(8, "alice", "door", ("198.18.1.5", 40002))
    assert isinstance(ask(sn, other_device, 1, 30.0), SendProbe)
    assert isinstance(ask(sn, ALICE, 3, 60.0), SendProbe)
    assert sn.service.counts["rate-limited"] == 1


def test_tests_running_at_once_are_capped() -> None:
    sn = supernode(limits=DialbackLimits(max_pending=2, max_devices=3))
    devices = [Requester(i, "user", f"d{i}", ("198.18.2.1", 1000 + i)) for i in range(5)]
    assert isinstance(ask(sn, devices[0], 1, 0.0), SendProbe)
    assert isinstance(ask(sn, devices[1], 1, 0.0), SendProbe)
    assert ask(sn, devices[2], 1, 0.0) == SendResult(2, 1, ErrorCode.BUSY)
    sn.service.handle_timer(5.0)  # both time out
    assert isinstance(ask(sn, devices[2], 1, 5.0), SendProbe)
    sn.service.handle_timer(10.0)
    # Three devices remembered for the rate limit: a fourth waits until one is forgotten.
    assert ask(sn, devices[3], 1, 10.0) == SendResult(3, 1, ErrorCode.BUSY)
    assert isinstance(ask(sn, devices[3], 1, 60.0), SendProbe)
    assert sn.service.counts["busy"] == 2


def test_nonces_are_fresh() -> None:
    sn = supernode()
    first = probe_nonce(ask(sn, ALICE, 1, 0.0))
    other = Requester(8, "bob", "desk", ("198.18.1.6", 1))
    assert probe_nonce(ask(sn, other, 1, 0.0)) != first


def test_only_dialback_messages_are_taken() -> None:
    sn = supernode()
    with pytest.raises(LocalError, match="DHT_PING"):
        sn.service.receive(ALICE, message(MsgType.DHT_PING, {"request_id": 1}), 0.0)


def test_the_certificate_must_certify_the_signing_key() -> None:
    one, two = identity(ISSUER, "sn-1"), identity(ISSUER, "sn-2")
    with pytest.raises(SupernodeIdentityError, match="another signing key"):
        DialbackService(one.keys.sign, two.certificate, ("198.18.0.1", 1))
    with pytest.raises(SupernodeIdentityError, match="not a certificate"):
        DialbackService(one.keys.sign, b"\x00", ("198.18.0.1", 1))


def test_limits_are_checked() -> None:
    with pytest.raises(LocalError):
        DialbackLimits(timeout=0)
    with pytest.raises(LocalError):
        DialbackLimits(timeout=90, interval=60)
    with pytest.raises(LocalError):
        DialbackLimits(max_pending=10, max_devices=5)


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["request", "confirm", "forged", "timer"]),
            st.integers(0, 5),
            st.floats(0, 30),
        ),
        max_size=40,
    )
)
def test_every_test_ends_with_exactly_one_result_and_tables_stay_capped(
    steps: list[tuple[str, int, float]],
) -> None:
    limits = DialbackLimits(timeout=5.0, interval=20.0, max_pending=2, max_devices=4)
    sn = supernode(limits=limits)
    nonces: dict[int, tuple[int, bytes]] = {}  # device: request id, nonce of its last probe
    probes: dict[int, list[float]] = {}
    outcomes: dict[int, int] = {}
    now = 0.0
    for n, (step, device, wait) in enumerate(steps):
        now += wait
        who = Requester(device, "user", f"d{device}", ("198.18.3.1", 2000 + device))
        if step == "request":
            sn.service.receive(
                who, message(MsgType.DIALBACK_REQUEST, {"request_id": n, "port": 9}), now
            )
        elif step in ("confirm", "forged") and device in nonces:
            request_id, nonce = nonces[device]
            body = {"request_id": request_id, "nonce": nonce if step == "confirm" else bytes(16)}
            sn.service.receive(who, message(MsgType.DIALBACK_CONFIRM, body), now)
        else:
            sn.service.handle_timer(now)
        while (action := sn.service.next_action()) is not None:
            if isinstance(action, SendProbe):
                nonces[device] = (n, probe_nonce(action))
                probes.setdefault(device, []).append(now)
            elif action.observed is not None:
                outcomes[action.index] = outcomes.get(action.index, 0) + 1
        assert len(sn.service._pending) <= limits.max_pending
        assert len(sn.service._last) <= limits.max_devices
    sn.service.handle_timer(now + limits.timeout)
    while (action := sn.service.next_action()) is not None:
        assert isinstance(action, SendResult)
        if action.observed is not None:
            outcomes[action.index] = outcomes.get(action.index, 0) + 1
    for device, times in probes.items():
        assert outcomes.get(device, 0) == len(times)  # each probe's test ended once
        assert all(b - a >= limits.interval for a, b in itertools.pairwise(times))


# -- attestations


def test_attestation_names_the_client_it_is_shown_by() -> None:
    raw = attest(supernode())
    with pytest.raises(AttestationWrongClient, match="alice"):
        verify_attestation(raw, TRUST, WALL + 1, user_id="alice", device_id="door")
    with pytest.raises(AttestationWrongClient):
        verify_attestation(raw, TRUST, WALL + 1, user_id="mallory", device_id="desk-1")


def test_a_changed_byte_breaks_the_signature() -> None:
    raw = bytearray(attest(supernode()))
    raw[-70] ^= 0x01  # inside issued_at... or the certificate's signature: either way refused
    with pytest.raises((AttestationBadSignature, AttestationCertificateRefused)):
        verify_attestation(bytes(raw), TRUST, WALL + 1, user_id="alice", device_id="desk-1")


def test_a_forged_observed_address_breaks_the_signature() -> None:
    sn = supernode()
    raw = attest(sn)
    forged = raw.replace(bytes([198, 18, 1, 5]), bytes([198, 18, 1, 6]), 1)
    assert forged != raw
    with pytest.raises(AttestationBadSignature, match="signature does not verify"):
        verify_attestation(forged, TRUST, WALL + 1, user_id="alice", device_id="desk-1")


def test_signer_must_be_certified_by_a_trusted_issuer() -> None:
    raw = attest(supernode())
    stranger = TrustStore([IssuerKey.generate().public])
    with pytest.raises(AttestationCertificateRefused) as caught:
        verify_attestation(raw, stranger, WALL + 1, user_id="alice", device_id="desk-1")
    assert caught.value.code is ErrorCode.CERT_UNKNOWN_ISSUER


def test_revoked_signer_is_refused() -> None:
    sn = supernode()
    raw = attest(sn)
    trust = TrustStore([ISSUER.public])
    trust.set_revoked(ISSUER.key_id, [1])
    with pytest.raises(AttestationCertificateRefused) as caught:
        verify_attestation(raw, trust, WALL + 1, user_id="alice", device_id="desk-1")
    assert caught.value.code is ErrorCode.CERT_REVOKED


def test_attestation_ages() -> None:
    raw = attest(supernode())
    day = 24 * 3600
    verify_attestation(raw, TRUST, WALL + day, user_id="alice", device_id="desk-1")
    with pytest.raises(AttestationStale, match="old"):
        verify_attestation(raw, TRUST, WALL + day + 1, user_id="alice", device_id="desk-1")
    with pytest.raises(AttestationStale, match="now is"):
        verify_attestation(raw, TRUST, WALL - 600, user_id="alice", device_id="desk-1")
    verify_attestation(raw, TRUST, WALL + 3600, user_id="alice", device_id="desk-1", max_age=3600)


def test_the_verifier_decides_who_is_a_supernode() -> None:
    sn = supernode()
    raw = attest(sn)
    members = {sn.ident.keys.dh_public}
    verified = verify_attestation(
        raw,
        TRUST,
        WALL + 1,
        user_id="alice",
        device_id="desk-1",
        accept_signer=lambda cert: cert.dh_key in members,
    )
    assert verified.signer_ip == "198.18.0.1"
    with pytest.raises(AttestationSignerRefused):
        verify_attestation(
            raw, TRUST, WALL + 1, user_id="alice", device_id="desk-1", accept_signer=lambda _: False
        )


def test_garbage_is_malformed() -> None:
    with pytest.raises(MalformedAttestation):
        verify_attestation(b"\x01\x02", TRUST, WALL, user_id="alice", device_id="desk-1")
    sn = supernode()
    bad_certificate = sign_attestation(
        sn.ident.keys.sign,
        b"\x01",
        user_id="alice",
        device_id="desk-1",
        observed=("198.18.1.5", PORT),
        supernode=sn.address,
        issued_at=int(WALL),
    )
    with pytest.raises(MalformedAttestation, match="certificate"):
        verify_attestation(bad_certificate, TRUST, WALL, user_id="alice", device_id="desk-1")


def test_an_attestation_is_no_other_signed_structure() -> None:
    # The context string keeps a presence or certificate signature from passing for one.
    sn = supernode()
    raw = attest(sn)
    tbs = raw[:-64]
    plain = tbs + sn.ident.keys.sign.sign(tbs).signature
    with pytest.raises(AttestationBadSignature):
        verify_attestation(plain, TRUST, WALL + 1, user_id="alice", device_id="desk-1")
