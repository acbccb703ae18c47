"""Secure sessions: Noise handshakes that carry certificates, over datagrams and streams."""
