"""A tiny project whose only use is to be locked."""

__version__ = "0.1.0"
