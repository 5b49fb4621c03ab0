"""A spec part ready to be made: a registered component class and its checked config.

The composer hands a method one :class:`Part` per slot. The method (or the engine) makes
instances from it — one per ensemble member where a part is fitted per member (projectors,
solvers) — without copying instances or knowing config fields: fields a component marks
``per_member`` (a projector's ``seed_field(per_member=True)``) are offset by the member's
index (:func:`attrkit.config.member_config`).
"""

from __future__ import annotations

from typing import Any

import attrs

from attrkit.config import member_config

__all__ = ["Part"]


@attrs.frozen
class Part:
    """One slot of a resolved spec.

    Attributes:
        cls: the component class (its flags are class attributes: ``part.cls.space``).
        config: its ``Config`` instance.
    """

    cls: type = attrs.field(repr=lambda c: c.__name__)
    config: Any

    @property
    def name(self) -> str:
        """The component's registered name."""
        return self.cls.name

    def make(self, member: int = 0) -> Any:
        """A new instance for ensemble member ``member`` (``0``: exactly the spec's config)."""
        return self.cls(member_config(self.config, member))
