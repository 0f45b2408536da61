"""The base of every config model: frozen, unknown keys rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Base of every config: frozen, unknown keys rejected, validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True)
