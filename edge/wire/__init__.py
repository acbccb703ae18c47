"""The edge wire format: every message declared once, with construct.

Import from the submodules (``edge.wire.codes``, ``edge.wire.messages``); this
package module stays empty so that ``edge.errors`` can import the codes early.
"""
