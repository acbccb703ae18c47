"""The device side: logging in, sessions with peers, calls, messages."""
