"""Groupers: ``singleton`` (every training example its own group)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from attrkit import hookimpl
from attrkit.context import FitContext


@attrs.frozen(kw_only=True)
class SingletonConfig:
    """``singleton`` has no parameters."""


class SingletonGrouper:
    """Group ``i`` is training example ``i``: pointwise attribution."""

    name: ClassVar[str] = "singleton"
    kind: ClassVar[str] = "grouper"
    Config: ClassVar[type] = SingletonConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: SingletonConfig):
        self.config = config

    def assign(self, context: FitContext) -> torch.Tensor:
        """``arange(n_train)``."""
        return torch.arange(context.n_train)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [SingletonGrouper]
