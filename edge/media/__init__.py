"""Media: the Opus codec binding, and later the jitter buffer and audio I/O."""
