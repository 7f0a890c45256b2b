"""Sources: the base class plugins subclass, the loop that publishes them, supervision."""

from fusiond.sources.base import Block, Source, SourceConfig, SourceContext, StreamInfo

__all__ = ["Block", "Source", "SourceConfig", "SourceContext", "StreamInfo"]
