"""attrkit's exceptions and warnings, all in this one module.

Every exception subclasses :class:`AttrkitError` *and* the builtin a caller would
catch without knowing attrkit (``ValueError``, ``LookupError``, ``ImportError``,
``MemoryError``). Messages name the problem, where it is (field, batch, example,
file, plugin) and the fix. Every warning subclasses :class:`AttrkitWarning`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "AttrkitError",
    "AttrkitWarning",
    "BrokenPluginError",
    "CheckpointError",
    "ComponentUnavailableError",
    "ConvergenceWarning",
    "CurvatureError",
    "DataLoaderError",
    "FactorisationError",
    "GroundTruthError",
    "InsufficientMemoryError",
    "LoadError",
    "LossFunctionError",
    "LossShapeError",
    "MemoryBudgetError",
    "MissingGroundTruthError",
    "ModelChangedError",
    "NonFiniteError",
    "NonFiniteWarning",
    "NotFittedError",
    "PluginConflictError",
    "PluginValidationError",
    "PluginWarning",
    "SaveError",
    "SpecError",
    "SpecFileWarning",
    "StoreCorruptError",
    "StoreMismatchError",
    "UnknownComponentError",
    "UntraceableWarning",
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


class StoreMismatchError(AttrkitError, ValueError):
    """A disk store that holds features of another spec, model, loss, data or batching."""


class StoreCorruptError(StoreMismatchError):
    """A disk store whose files are damaged, missing or unreadable (names the file)."""


class SaveError(AttrkitError, ValueError):
    """A fitted attributor, or one of its parts, that cannot be saved: names the part, why (e.g. a
    solver that reads the training data at every solve) and the alternative."""


class LoadError(AttrkitError, ValueError):
    """A saved attributor that cannot be loaded as asked: the task's weights differ from those it
    was fitted at, or its files are damaged, altered or of another format. Names what differs
    and the fix."""


class MemoryBudgetError(AttrkitError, ValueError):
    """A memory budget too small for what must be held at once."""


class InsufficientMemoryError(AttrkitError, MemoryError):
    """An allocation attrkit is about to make exceeds the memory this machine has available."""


class CurvatureError(AttrkitError, ValueError):
    """The damped curvature ``H + λI`` cannot be inverted as asked: not positive definite,
    a diverging LiSSA recursion, or a matrix too large to build."""


class FactorisationError(AttrkitError, ValueError):
    """A layer's factors do not reproduce its gradient (its weight is used elsewhere)."""


class NonFiniteError(AttrkitError, ValueError):
    """A NaN or infinite value where a finite one is needed: checkpoint weights, inputs,
    losses, gradients, features, solver outputs or scores. Names where it is."""


class ModelChangedError(AttrkitError, RuntimeError):
    """The model's weights changed since ``fit`` (or during it): the fitted state no
    longer describes the model. Names the parameters that changed."""


class LossFunctionError(AttrkitError, RuntimeError):
    """The user's ``loss_fn`` / ``target_fn`` (or the model it calls) failed; the message adds
    the batch, the dtypes and shapes of its tensors and the likely fix. The original
    exception is the ``__cause__``."""


class GroundTruthError(AttrkitError, ValueError):
    """Ground truth (or scores) a metric cannot use: shapes that do not line up, a wrong
    dtype, values out of range, or a retraining callable that returned the wrong thing."""


class MissingGroundTruthError(GroundTruthError, KeyError):
    """Ground truth that lacks entries a metric ``needs``; also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class AttrkitWarning(UserWarning):
    """Base class of every warning attrkit issues."""


class ConvergenceWarning(AttrkitWarning):
    """An iterative solver stopped before reaching its tolerance (the residual is named)."""


class NonFiniteWarning(AttrkitWarning):
    """Non-finite examples were skipped, as ``nonfinite="skip"`` asked (their indices are named)."""


class BrokenPluginError(AttrkitError, LookupError):
    """A component or preset asked for by name whose plugin is broken.

    A plugin is broken when one of its hooks raised or returned something invalid;
    none of its components or presets is registered then (the other plugins are not
    affected). The message names the plugin, what is wrong with it and the fix.
    """


class PluginWarning(AttrkitWarning):
    """Something about the installed plugins needs attention, e.g. a name in
    ``ATTRKIT_BLOCK_PLUGINS`` (or ``block=``) that matches no installed plugin."""


class ArgumentError(AttrkitError, ValueError):
    """A function or config was given a value it cannot use (a shape, a range, a name); the
    message names the argument, the value and what is allowed."""


class ArgumentTypeError(AttrkitError, TypeError):
    """A function or config was given a value of the wrong type; the message names the
    argument, its type and the type expected."""


class UntraceableWarning(AttrkitWarning):
    """The model or loss cannot run under ``torch.func.vmap``: per-example gradients are taken one
    example at a time instead (exact, slower)."""


class SpecFileWarning(AttrkitWarning):
    """A spec read from a file carried keys :func:`attrkit.compose` ignores (benchmark-only keys:
    ``label``, ``members``, ``compare``, ``skip``); the warning names them."""
