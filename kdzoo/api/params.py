"""The base class of component params models (torch-free: hook modules import it)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for a component's params: unknown keys are refused, defaults are validated.

    Subclass it and declare fields with ``pydantic.Field`` bounds (and a
    ``description`` each: ``kdzoo plugins -v`` and the spec schema show it);
    ``register(..., params=MyParams)`` checks that the defaults satisfy the bounds, and
    ``register(..., examples=[{...}])`` that each example params dict validates. Float
    fields refuse NaN and infinity.

    - ``examples``: non-default params dicts that ``kdzoo plugins check`` runs besides
      the defaults; validated at registration, like ``register(..., examples=[...])``.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    #: Non-default params (dicts) that ``kdzoo plugins check`` runs besides the defaults;
    #: validated at registration, like ``register(..., examples=[...])``.
    examples: ClassVar[tuple[dict[str, Any], ...]] = ()


class NoParams(Params):
    """Params model of a component that takes no parameters."""
