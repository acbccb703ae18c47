"""STUN Binding on one core: what a supernode pays per "Am I X?".

The request goes through the server core's whole path (parse, checks,
response with XOR-MAPPED-ADDRESS, SOFTWARE and FINGERPRINT, queueing);
the reference is the codec alone parsing the request and building a
response of the same shape, measured in the same run.
"""

import os

from bench.common import Figure, rate
from edge.stun.attributes import AttrType
from edge.stun.codec import Class, Message, Method, build, parse
from edge.stun.server import BindingServer

CLIENT = ("198.18.0.9", 40000)


def run() -> list[Figure]:
    request = Message(Method.BINDING, Class.REQUEST, os.urandom(12), [])
    request.add_fingerprint()
    data = build(request)
    server = BindingServer()

    def serve() -> None:
        server.receive_datagram(data, CLIENT, 0.0)
        server.datagrams_to_send(0.0)

    def codec_only() -> bytes:
        parsed = parse(data)
        reply = Message(
            Method.BINDING,
            Class.SUCCESS,
            parsed.transaction_id,
            [(AttrType.XOR_MAPPED_ADDRESS, CLIENT), (AttrType.SOFTWARE, "edge")],
        )
        reply.add_fingerprint()
        return build(reply)

    served = rate(serve, 1.0)
    reference = rate(codec_only, 1.0)
    return [Figure("STUN Binding requests answered", served, "req/s", "codec alone", reference)]
