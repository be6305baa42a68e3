"""The base class of component params models (torch-free: hook modules import it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for a component's params: unknown keys are refused, defaults are validated.

    Subclass it and declare fields with ``pydantic.Field`` bounds; ``register(...,
    params=MyParams)`` checks that the defaults satisfy the bounds. ``examples`` (a class
    attribute) lists non-default params that ``kdzoo plugins check`` also runs with.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)


class NoParams(Params):
    """Params model of a component that takes no parameters."""
