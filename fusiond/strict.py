"""The base of every table fusiond reads from TOML: the config's sections, a source kind's
options, a training recipe's tables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    """A table whose unknown keys are errors (a misspelt option is never silently ignored)
    and whose values never change once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
