"""The exceptions fusiond raises on purpose.

    FusiondError                 expected failure: one clear line, non-zero exit
    ├── ConfigError              a config file or value is unusable (names the TOML path)
    ├── PluginError              a plugin failed to load or registered something invalid
    ├── SourceError              a source could not open or lost its device (retried)
    │   └── SourceConfigError    its options cannot work with what it found (not retried)
    ├── ModelError               a checkpoint is missing, corrupt or does not fit the config
    └── WireError                a message on the bus broke the protocol (counted, never fatal)
        ├── VersionError         unknown major protocol version
        └── FrameError           bad header, bad dtype/shape, or a buffer of the wrong size

Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FrameError",
    "FusiondError",
    "ModelError",
    "PluginError",
    "SourceConfigError",
    "SourceError",
    "VersionError",
    "WireError",
]


class FusiondError(Exception):
    """Base of every expected fusiond failure."""


class ConfigError(FusiondError):
    """A config file or value is unusable."""

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.message = message
        self.path = path
        self.source = source
        where = f"{source}: " if source else ""
        at = f"{path}: " if path else ""
        super().__init__(f"{where}{at}{message}")

    def in_file(self, source: str) -> ConfigError:
        """This error, naming ``source`` as its file unless it names one already."""
        return self if self.source else ConfigError(self.message, path=self.path, source=source)


class PluginError(FusiondError):
    """A plugin failed to load or registered something invalid."""


class SourceError(FusiondError):
    """A source could not open its device or file, or lost it."""


class SourceConfigError(SourceError):
    """A source's options cannot work with what it found (a column its file lacks, words
    its recogniser does not know): retrying will not help, so it is not retried."""


class ModelError(FusiondError):
    """A checkpoint is missing, corrupt or does not fit the config."""


class WireError(FusiondError):
    """A message broke the wire protocol; ``reason`` is the drop-counter key."""

    reason = "bad_message"


class VersionError(WireError):
    """The message speaks an unknown major protocol version."""

    reason = "bad_version"


class FrameError(WireError):
    """Bad header, dtype or shape, or a buffer whose size does not match its header."""

    def __init__(self, message: str, reason: str = "bad_header") -> None:
        self.reason = reason
        super().__init__(message)
