"""attrkit: composable training data attribution for PyTorch.

>>> import attrkit
>>> task = attrkit.AttributionTask(model=model, loss_fn=loss_fn)          # doctest: +SKIP
>>> attributor = attrkit.compose({"method": "grad-dot"}, task)            # doctest: +SKIP
>>> scores = attributor.fit(train_loader).attribute(test_loader)        # doctest: +SKIP
>>> attrkit.explain(attributor, test_loader, train_loader).to_html("explain.html")  # doctest: +SKIP

Sign convention: targets are loss-like (lower is better) and ``scores[t, i] > 0``
means training example ``i`` is a proponent of test example ``t``.
"""

from __future__ import annotations

from importlib import metadata

from attrkit.compose import Resolved, compose, metric, resolve
from attrkit.context import FitContext, Member
from attrkit.errors import (
    ArgumentError,
    ArgumentTypeError,
    AttrkitError,
    AttrkitWarning,
    BrokenPluginError,
    CheckpointError,
    ComponentUnavailableError,
    ConvergenceWarning,
    CurvatureError,
    DataLoaderError,
    FactorisationError,
    GroundTruthError,
    InsufficientMemoryError,
    LoadError,
    LossFunctionError,
    LossShapeError,
    MemoryBudgetError,
    MissingGroundTruthError,
    ModelChangedError,
    NonFiniteError,
    NonFiniteWarning,
    NotFittedError,
    PluginConflictError,
    PluginValidationError,
    PluginWarning,
    SaveError,
    SpecError,
    SpecFileWarning,
    StoreCorruptError,
    StoreMismatchError,
    UnknownComponentError,
    UntraceableWarning,
)
from attrkit.engine import GradientAttributor
from attrkit.explanations import Explanation, explain
from attrkit.selection import TopK
from attrkit.hookspecs import hookimpl
from attrkit.results import MetricResult
from attrkit.saving import load
from attrkit.registry import Registry, components, default_registry, reset_registry
from attrkit.spec import ComponentSpec, Spec
from attrkit.targets import cross_entropy, negated_margin
from attrkit.task import AttributionTask

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "AttributionTask",
    "AttrkitError",
    "AttrkitWarning",
    "BrokenPluginError",
    "CheckpointError",
    "ComponentSpec",
    "ComponentUnavailableError",
    "ConvergenceWarning",
    "CurvatureError",
    "DataLoaderError",
    "Explanation",
    "FactorisationError",
    "FitContext",
    "GradientAttributor",
    "GroundTruthError",
    "InsufficientMemoryError",
    "LoadError",
    "LossFunctionError",
    "LossShapeError",
    "Member",
    "MemoryBudgetError",
    "MetricResult",
    "MissingGroundTruthError",
    "ModelChangedError",
    "NonFiniteError",
    "NonFiniteWarning",
    "NotFittedError",
    "PluginConflictError",
    "PluginValidationError",
    "PluginWarning",
    "Registry",
    "Resolved",
    "SaveError",
    "Spec",
    "SpecError",
    "SpecFileWarning",
    "StoreCorruptError",
    "StoreMismatchError",
    "TopK",
    "UnknownComponentError",
    "UntraceableWarning",
    "__version__",
    "components",
    "compose",
    "metric",
    "cross_entropy",
    "default_registry",
    "explain",
    "hookimpl",
    "load",
    "negated_margin",
    "reset_registry",
    "resolve",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        return metadata.version("attrkit")
    raise AttributeError(f"module 'attrkit' has no attribute {name!r}")
