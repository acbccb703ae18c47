"""STUN (RFC 8489) with the TURN (RFC 8656) and NAT discovery (RFC 5780) attributes.

Sans-IO: bytes in, messages out, and back. Import from the submodules:
``edge.stun.codec`` (messages, attributes, integrity, fingerprint, keys),
``edge.stun.channel`` (TURN ChannelData and the first-byte demultiplexer) and
``edge.stun.errors``.
"""
