"""The ZeroMQ bus: wire format, broker and sockets."""

__all__ = []
