"""The runtime: what runs the sans-IO cores on a real machine.

``config`` reads TOML with precise errors and writes files atomically, ``logs``
formats one safe line per record for stderr or the journal, ``notify`` speaks
sd_notify, ``adapters`` drive protocol cores over asyncio transports and
``loop`` starts uvloop and maps signals to cancellation.
"""
