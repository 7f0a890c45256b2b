"""Outputs: where predictions go besides the bus (MQTT, ...), each a plugin's kind.

An output runs as a bridge process of its own, started and restarted by the daemon like a
source, subscribed to the prediction stream on the bus. An output's network (a broker
away, a slow client, TLS) then never reaches inference: the server publishes on the bus
as always, the bridge's queue is bounded, and what it could not deliver is counted
(:mod:`fusiond.outputs.runner`).
"""

from fusiond.outputs.base import Output, OutputConfig, OutputContext, OutputError, payload

__all__ = ["Output", "OutputConfig", "OutputContext", "OutputError", "payload"]
