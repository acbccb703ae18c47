"""edge: open two-tier peer-to-peer voice and messaging for small Linux boards."""

__version__ = "0.1.0"
