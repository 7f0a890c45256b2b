"""``fusiond topics``: every topic seen on the bus, with its rate, bandwidth and publishers (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["bandwidth", "MAX_TOPICS", "TopicSeen", "TopicTable"]

MAX_TOPICS = 10_000
"""Topics tracked at most: a flood of made-up topic names cannot grow the table further."""


@dataclass
class TopicSeen:
    """What one topic carried while we listened."""

    type: str = ""
    modality: str = ""
    messages: int = 0
    bytes: int = 0
    publishers: set[str] = field(default_factory=set)
    anonymous: int = 0
    """Messages without a usable ``pub`` field (a publisher not built on fusiond, say)."""


class TopicTable:
    """Topic -> :class:`TopicSeen`, fed one message at a time."""

    def __init__(self) -> None:
        self.topics: dict[str, TopicSeen] = {}
        self.untracked = 0

    def add(self, topic: str, size: int, header: dict[str, Any] | None, publisher: str | None) -> None:
        """Count one message of ``size`` bytes (every frame); ``header`` None when unreadable."""
        seen = self.topics.get(topic)
        if seen is None:
            if len(self.topics) >= MAX_TOPICS:
                self.untracked += 1
                return
            seen = self.topics[topic] = TopicSeen()
        seen.messages += 1
        seen.bytes += size
        if header is not None:
            kind, modality = header.get("type"), header.get("modality")
            seen.type = kind[:32] if isinstance(kind, str) else seen.type
            seen.modality = modality[:32] if isinstance(modality, str) else seen.modality
        else:
            seen.type = seen.type or "malformed"
        if publisher is None:
            seen.anonymous += 1
        elif len(seen.publishers) < 1000:
            seen.publishers.add(publisher)

    def rows(self, seconds: float) -> list[dict[str, Any]]:
        """One row per topic, sorted; rates over the ``seconds`` listened."""
        span = max(seconds, 1e-9)
        return [
            {
                "topic": topic,
                "type": s.type,
                "modality": s.modality,
                "messages": s.messages,
                "messages_per_s": round(s.messages / span, 2),
                "bytes_per_s": round(s.bytes / span, 1),
                "publishers": len(s.publishers),
                "publisher_ids": sorted(s.publishers),
                "unnamed_messages": s.anonymous,
            }
            for topic, s in sorted(self.topics.items())
        ]


def bandwidth(bytes_per_s: float) -> str:
    """``12.3 KB/s`` style."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.1f} {unit}"
    return f"{bytes_per_s:.0f} B/s"
