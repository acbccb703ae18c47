"""Sessions where one side has no certificate: a device enrolling at its login server.

The device pins the server's Noise key; the server lets the device in without a
certificate and authenticates it inside the session.
"""

import pytest

from edge.crypto.cert import TrustStore
from edge.crypto.keys import DeviceKeys, IssuerKey
from edge.errors import RemoteError
from edge.session.errors import HandshakeRejected
from edge.session.events import SessionEstablished
from edge.session.handshake import Identity
from edge.session.stream import StreamSession
from tests.sessions import WALL, identity
from tests.test_session_stream import A, B, drain, pump

SERVER = Identity(DeviceKeys.generate(), b"")


def device(*, pinned: bytes, keys: DeviceKeys | None = None) -> StreamSession:
    session = StreamSession(
        Identity(keys or DeviceKeys.generate(), b""),
        TrustStore(),
        initiator=True,
        wall_offset=WALL,
        pinned_static=pinned,
    )
    session.connection_made(B, 0.0)
    return session


def server(*, require_certificate: bool = False) -> StreamSession:
    session = StreamSession(
        SERVER,
        TrustStore(),
        initiator=False,
        wall_offset=WALL,
        require_certificate=require_certificate,
    )
    session.connection_made(A, 0.0)
    return session


def up(session: StreamSession) -> SessionEstablished:
    (event,) = drain(session)
    assert isinstance(event, SessionEstablished)
    return event


def test_pinned_server_and_anonymous_device_agree() -> None:
    keys = DeviceKeys.generate()
    client, srv = device(pinned=SERVER.keys.dh_public, keys=keys), server()
    pump(client, srv)
    client_up, server_up = up(client), up(srv)
    assert client_up.peer is None and server_up.peer is None
    assert client_up.remote_static == SERVER.keys.dh_public
    assert server_up.remote_static == keys.dh_public
    assert client_up.handshake_hash == server_up.handshake_hash != b""


def test_a_server_that_is_not_the_pinned_one_is_refused() -> None:
    impostor = DeviceKeys.generate().dh_public
    client, srv = device(pinned=impostor), server()
    with pytest.raises(HandshakeRejected, match="not the pinned"):
        pump(client, srv)
    assert client.closed
    assert not any(isinstance(e, SessionEstablished) for e in drain(client))


def test_a_server_that_requires_certificates_refuses_an_anonymous_device() -> None:
    client, srv = device(pinned=SERVER.keys.dh_public), server(require_certificate=True)
    with pytest.raises(RemoteError, match="without the peer's certificate"):
        pump(client, srv)
    assert srv.closed


def test_an_anonymous_peer_is_still_refused_by_default() -> None:
    issuer = IssuerKey.generate()
    certified = StreamSession(
        identity(issuer, "alice"), TrustStore([issuer.public]), initiator=True, wall_offset=WALL
    )
    anonymous = StreamSession(
        SERVER, TrustStore([issuer.public]), initiator=False, wall_offset=WALL
    )
    certified.connection_made(B, 0.0)
    anonymous.connection_made(A, 0.0)
    with pytest.raises(HandshakeRejected):
        pump(certified, anonymous)
