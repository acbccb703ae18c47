"""Cutting a TCP/TLS byte stream into STUN and ChannelData messages (RFC 8656 §12.5).

How it works: over TCP and TLS a TURN client and server share one byte stream
that carries STUN messages and ChannelData back to back with no outer framing.
Each message gives its own length in bytes 2-3: a STUN message is its 20-byte
header and that many bytes, a ChannelData message its 4-byte header, that many
bytes and the padding to a multiple of four a stream requires
(:func:`~edge.stun.channel.frame_size`). :class:`StreamDeframer` keeps what has
arrived of the unfinished message and hands back every whole one, ChannelData
with its padding (the parser accepts it).

Caps: a message announcing more than ``max_message`` bytes is refused as soon
as its first four bytes are in, without waiting for its body; and since only
the unfinished message is kept, fewer than ``max_message`` bytes stay buffered
between calls (:attr:`StreamDeframer.buffered`). A first byte that is neither
STUN (0-3) nor ChannelData (64-79) means the stream has lost its framing, and
there is no way to find it again. Both raise
:class:`~edge.stun.errors.FramingError`: the owner closes the connection. The
deframer stays broken; every later :meth:`StreamDeframer.feed` raises too.
Not every stranger is caught: ``GET /`` reads as ChannelData on channel 0x4745
announcing 21536 bytes, so the owner needs an idle timeout on its connections.
"""

from edge.stun.channel import MAX_FRAME, STUN_HEADER_SIZE, frame_size
from edge.stun.errors import FramingError, StunBuildError, StunError


class StreamDeframer:
    """Whole STUN and ChannelData messages out of one connection's byte stream."""

    def __init__(self, *, max_message: int = MAX_FRAME) -> None:
        if max_message < STUN_HEADER_SIZE:
            raise StunBuildError(f"max_message {max_message} is under a 20-byte STUN header")
        self.max_message = max_message
        self._buffer = bytearray()
        self._broken: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message, held until the rest arrives."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Take the bytes the connection received; return the messages they complete.

        Raises FramingError when the stream cannot be cut into messages (messages
        completed earlier in the same ``data`` are lost with it): close the connection.
        """
        if self._broken is not None:
            raise FramingError(f"after an earlier error: {self._broken}", code=self._broken.code)
        self._buffer += data
        messages: list[bytes] = []
        start = 0
        while (size := self._size_at(start)) is not None and start + size <= len(self._buffer):
            messages.append(bytes(self._buffer[start : start + size]))
            start += size
        del self._buffer[:start]
        return messages

    def _size_at(self, start: int) -> int | None:
        """The size of the message starting at ``start``; None until its header is in."""
        try:
            return frame_size(bytes(self._buffer[start : start + 4]), limit=self.max_message)
        except StunError as error:
            self._broken = FramingError(str(error), code=error.code)
            raise self._broken from error
