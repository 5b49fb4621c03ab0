"""Everything a plugin author imports, in one module (besides the pure maths of :mod:`attrkit.functional`).

A plugin is a module named in the entry-point group ``attrkit`` whose
:data:`hookimpl`-marked ``attrkit_components()`` returns component classes. Each class
subclasses the base of its kind — :class:`Projector`, :class:`HessianSolver`,
:class:`GradientSource`, :class:`Grouper`, :class:`Ensemble`, :class:`Metric`, or, for a
method, :class:`GradientAttributor` (the shared score formula: override its hooks) or
:class:`Attributor` (a formula of its own) — and declares ``name``, a frozen ``Config``
built from the field helpers below, ``requires``/``provides`` capabilities, and the flags
of its kind. ``attrkit.testing.check_component`` runs the conformance checks of its kind;
:mod:`distributed` (``shard``, ``sum_over_ranks``...) lets a solver split its passes over ranks.
A projector or solver that implements ``state_dict``/``load_state_dict`` can be saved with its
attributor (``attributor.save(path)``, :func:`attrkit.load`); a method of a formula of its own
implements ``save``/``restore`` with :func:`save_attributor` and :class:`Saved`.

Example (a projector)::

    import attrs, torch
    from attrkit import plugin

    @attrs.frozen(kw_only=True)
    class SignsConfig:
        dim: int = plugin.positive_int(512, (8,))
        seed: int = plugin.seed_field(per_member=True)

    class Signs(plugin.Projector):
        name, Config = "my-signs", SignsConfig

        def fit(self, context):                   # context.dimension is p
            gen = torch.Generator().manual_seed(self.config.seed)
            self.matrix = torch.randint(0, 2, (context.dimension, self.config.dim), generator=gen) * 2.0 - 1

        def project(self, vectors):               # Tensor[b, p] -> Tensor[b, dim]
            return vectors @ self.matrix.to(vectors) / self.config.dim ** 0.5

    @plugin.hookimpl
    def attrkit_components():
        return [Signs]
"""

from __future__ import annotations

from attrkit import distributed
from attrkit.capabilities import FACTORED, GROUP, HVP, LAST_LAYER, PER_EXAMPLE, STRUCTURED
from attrkit.context import FitContext, Member
from attrkit.data import batch_size, to_device
from attrkit.engine import Fit, FittedMember, GradientAttributor
from attrkit.engine.self_influence import self_influence
from attrkit.errors import (
    ArgumentError,
    ArgumentTypeError,
    AttrkitError,
    AttrkitWarning,
    CheckpointError,
    ComponentUnavailableError,
    ConvergenceWarning,
    CurvatureError,
    DataLoaderError,
    GroundTruthError,
    LoadError,
    LossFunctionError,
    LossShapeError,
    MemoryBudgetError,
    MissingGroundTruthError,
    NonFiniteError,
    NotFittedError,
    SaveError,
    SpecError,
)
from attrkit.feature_matrix import FeatureMatrix
from attrkit.fields import (
    as_float,
    as_int,
    float_field,
    floats_field,
    frozen_field,
    int_field,
    is_bool,
    not_bool,
    params_field,
    positive_int,
    products_field,
    seed_field,
)
from attrkit.finite import cause, check_rows, check_scores
from attrkit.fit_guard import FitGuard
from attrkit.hookspecs import hookimpl
from attrkit.loaders import CheckedLoader, checked
from attrkit.parameter_gradients import ParameterGradients, restrict_gradients
from attrkit.parameter_solver import ParameterSolver, Solve
from attrkit.parts import Part
from attrkit.precheck import gradient_dimension, member_count
from attrkit.progress import progress
from attrkit.protocols import (
    Attributor,
    Component,
    Ensemble,
    GradientSource,
    Grouper,
    HessianSolver,
    Metric,
    Projector,
)
from attrkit.results import MetricResult
from attrkit.rows import stack_rows
from attrkit.saving import Saved, save_attributor
from attrkit.selection import TopK
from attrkit.targets import cross_entropy, negated_margin
from attrkit.task import AttributionTask
from attrkit.types import StateValue
from attrkit.user_code import user_code, user_code_pass

__all__ = [
    "FACTORED",
    "GROUP",
    "HVP",
    "LAST_LAYER",
    "PER_EXAMPLE",
    "STRUCTURED",
    "ArgumentError",
    "ArgumentTypeError",
    "AttributionTask",
    "Attributor",
    "AttrkitError",
    "AttrkitWarning",
    "CheckedLoader",
    "CheckpointError",
    "Component",
    "ComponentUnavailableError",
    "ConvergenceWarning",
    "CurvatureError",
    "DataLoaderError",
    "Ensemble",
    "FeatureMatrix",
    "Fit",
    "FitContext",
    "FitGuard",
    "FittedMember",
    "GradientAttributor",
    "GradientSource",
    "GroundTruthError",
    "Grouper",
    "HessianSolver",
    "LoadError",
    "LossFunctionError",
    "LossShapeError",
    "Member",
    "MemoryBudgetError",
    "Metric",
    "MetricResult",
    "MissingGroundTruthError",
    "NonFiniteError",
    "NotFittedError",
    "ParameterGradients",
    "ParameterSolver",
    "Part",
    "Projector",
    "SaveError",
    "Saved",
    "Solve",
    "SpecError",
    "StateValue",
    "TopK",
    "as_float",
    "as_int",
    "batch_size",
    "cause",
    "check_rows",
    "check_scores",
    "checked",
    "cross_entropy",
    "distributed",
    "float_field",
    "floats_field",
    "frozen_field",
    "products_field",
    "gradient_dimension",
    "hookimpl",
    "int_field",
    "is_bool",
    "member_count",
    "negated_margin",
    "not_bool",
    "params_field",
    "positive_int",
    "progress",
    "restrict_gradients",
    "save_attributor",
    "stack_rows",
    "seed_field",
    "self_influence",
    "to_device",
    "user_code",
    "user_code_pass",
]
