"""Recording the bus to MCAP, reading recordings back, and replaying them."""

from fusiond.recording.mcapfile import Recorded, RecordingInfo, info, read

__all__ = ["Recorded", "RecordingInfo", "info", "read"]
