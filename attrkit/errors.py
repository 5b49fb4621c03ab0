"""attrkit's exceptions.

Every exception subclasses :class:`AttrkitError` *and* the builtin a caller would
catch without knowing attrkit (``ValueError``, ``LookupError``, ``ImportError``).
Messages name the field, the value and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

__all__ = [
    "AttrkitError",
    "CheckpointError",
    "ComponentUnavailableError",
    "DataLoaderError",
    "LossShapeError",
    "NotFittedError",
    "PluginConflictError",
    "PluginValidationError",
    "SpecError",
    "UnknownComponentError",
]


class AttrkitError(Exception):
    """Base class of every error attrkit raises on purpose."""


class SpecError(AttrkitError, ValueError):
    """A spec that cannot be composed; ``problems`` lists every issue found.

    Args:
        problems: one human-readable line per problem, each starting with its path
            (``projector.dim``), so that a user can fix them all in one go.
    """

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"spec has {n} problem{'s' if n != 1 else ''}:\n{lines}")


class UnknownComponentError(AttrkitError, LookupError):
    """A (kind, name) the registry does not hold. The message is a menu.

    Args:
        kind: the component kind looked up (``"projector"``).
        name: the name asked for.
        available: ``{name: plugin}`` of what the registry holds for this kind.
        plugins: names of every loaded plugin.
        failed: ``{plugin: reason}`` of plugins that failed to load.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        available: Mapping[str, str],
        plugins: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
    ):
        self.kind, self.name = kind, name
        self.available = dict(available)
        super().__init__(self.describe(plugins, failed or {}))

    def describe(self, plugins: Iterable[str], failed: Mapping[str, str]) -> str:
        """The menu: what exists, the close matches and the installed plugins."""
        close = difflib.get_close_matches(self.name, list(self.available), n=3)
        lines = [f"unknown {self.kind} {self.name!r}."]
        if close:
            lines.append(f"Did you mean: {', '.join(repr(c) for c in close)}?")
        if self.available:
            menu = ", ".join(f"{n} ({p})" for n, p in sorted(self.available.items()))
            lines.append(f"Available {self.kind} components: {menu}.")
        else:
            lines.append(f"No {self.kind} component is registered.")
        lines.append(f"Installed plugins: {', '.join(sorted(plugins)) or 'none'}.")
        for plugin, why in sorted(failed.items()):
            lines.append(f"Plugin {plugin!r} failed to load: {why}")
        lines.append("(A component may live in a plugin that is not installed.)")
        return " ".join(lines)


class ComponentUnavailableError(AttrkitError, ImportError):
    """A registered component that cannot run on this machine (missing backend)."""


class PluginConflictError(AttrkitError, ValueError):
    """Two plugins registered the same (kind, name); names both providers."""


class PluginValidationError(AttrkitError, TypeError):
    """A plugin returned something that is not a valid component class."""


class DataLoaderError(AttrkitError, ValueError):
    """A loader attrkit cannot use as given (shuffled, empty, ragged batches)."""


class LossShapeError(AttrkitError, ValueError):
    """``loss_fn``/``target_fn`` returned something other than ``Tensor[b]``."""


class CheckpointError(AttrkitError, ValueError):
    """A checkpoint whose keys or shapes do not fit the task's model."""


class NotFittedError(AttrkitError, RuntimeError):
    """``attribute`` or ``self_influence`` called before ``fit``."""
