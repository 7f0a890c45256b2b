"""The ZeroMQ bus: wire format, broker and sockets."""
