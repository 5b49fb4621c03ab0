"""LoGra-style components: gradient source ``factored`` and projector ``kronecker``."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import attrs
import torch

from attrkit import capabilities, hookimpl
from attrkit.config import params_field, positive_int, seed_field
from attrkit.context import FitContext, Member
from attrkit.data import to_device
from attrkit.functional.factored import FactoredGradients, LayerFactors, factored_gradients, plan_factors
from attrkit.functional.projection import SeededMatrix, block_generator, gaussian_sampler
from attrkit.parameter_gradients import ParameterGradients
from attrkit.task import AttributionTask


@attrs.frozen(kw_only=True)
class FactoredConfig:
    """Config of ``factored``.

    Attributes:
        params: ``fnmatch`` patterns of parameter names to differentiate; default all.
    """

    params: tuple[str, ...] = params_field()


class FactoredGradientSource(ParameterGradients):
    """Per-example gradients kept as per-layer factors (inputs ⊗ output gradients).

    ``nn.Linear`` and ``nn.Conv1d/2d`` (``groups=1``) weights and biases are factored
    (see :mod:`attrkit.functional.factored`); any other selected parameter (embeddings,
    norms, attention's own weights, shared weights) gets exact per-example gradients,
    with one warning per source instance naming those modules. Returns a
    :class:`~attrkit.functional.factored.FactoredGradients` of shape ``(b, p)``:
    ``kronecker`` projects it without forming the gradients; any other projector or
    solver receives ``materialize()``, identical to ``per-example`` for the same ``params``.
    Taken one example at a time (``torch.func.vmap``), in eval mode, at the member's weights.

    Example:
        >>> spec = {"method": "grad-dot", "gradients": "factored", "projector": "kronecker"}
        >>> attrkit.compose(spec, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "factored"
    Config: ClassVar[type] = FactoredConfig
    provides: ClassVar[frozenset[str]] = frozenset({capabilities.PER_EXAMPLE, capabilities.FACTORED})

    def __init__(self, config: FactoredConfig):
        super().__init__(config)
        self._warned = False

    def _grads(self, task: AttributionTask, fn: Any, member: Member, batch: Any) -> FactoredGradients:
        plan = plan_factors(task.model, self.names(task))
        if plan.fallback and not self._warned:
            self._warned = True
            q = sum(member.state[n].numel() for n in plan.fallback)
            warnings.warn(
                f"gradient source 'factored' cannot factor {', '.join(plan.fallback_modules)}: their "
                f"{len(plan.fallback)} parameter tensors ({q} entries) use exact per-example gradients",
                stacklevel=3,
            )
        return factored_gradients(task.model, fn, member.state, to_device(batch, task.device), plan)


@attrs.frozen(kw_only=True)
class KroneckerConfig:
    """Config of ``kronecker``.

    Attributes:
        dim_in: ``k_in``, columns of each layer's input-side matrix.
        dim_out: ``k_out``, columns of each layer's output-side matrix; each factored
            layer gives ``dim_in * dim_out`` features.
        fallback_dim: features of the fallback (non-factored) block; default
            ``dim_in * dim_out``.
        seed: fixes every matrix (per device type); layer ``l`` uses seeds derived
            from ``(seed, 2l + 1)`` and ``(seed, 2l + 2)``, the fallback ``(seed, 0)``.
    """

    dim_in: int = positive_int(16, (2, 4))
    dim_out: int = positive_int(16, (3, 2))
    fallback_dim: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional([attrs.validators.instance_of(int), attrs.validators.ge(1)]),
        metadata={"examples": (None, 8)},
    )
    seed: int = seed_field()


def _derived_seed(seed: int, index: int) -> int:
    return block_generator(seed, index, torch.device("cpu")).initial_seed()


class KroneckerProjector:
    """Per-layer ``kron(P_out, P_in)`` projection of factored gradients (LoGra).

    For a layer with factors ``a [b, T, d_in]``, ``g [b, T, d_out]`` the features are
    ``vec(Σ_t (g_t P_out)ᵀ ([a_t, 1] P_in))`` (``Tensor[b, dim_out * dim_in]``), i.e. the
    weight gradient (bias as a last input column) times ``kron(P_out, P_in)``, at cost
    ``b T (d_in k_in + d_out k_out + k_in k_out)`` instead of ``b d_in d_out k``.
    ``P_in [d_in (+1), dim_in]`` and ``P_out [d_out, dim_out]`` are seeded Gaussian with
    variance ``1/k``, so inner products are kept in expectation. The fallback block is
    projected by a seeded Gaussian ``[q, fallback_dim]``. Output: the layers in model
    order, then the fallback features. Needs the ``factored`` gradient source.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "gradients": "factored",
        ...                  "projector": {"name": "kronecker", "dim_in": 16, "dim_out": 16}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "kronecker"
    kind: ClassVar[str] = "projector"
    Config: ClassVar[type] = KroneckerConfig
    requires: ClassVar[frozenset[str]] = frozenset({capabilities.FACTORED})
    provides: ClassVar[frozenset[str]] = frozenset()
    #: The engine hands it factored gradients whole.
    accepts_factored: ClassVar[bool] = True

    def __init__(self, config: KroneckerConfig):
        self.config = config
        self._matrices: dict[tuple[int, int, int], tuple[SeededMatrix, SeededMatrix]] = {}
        self._fallback: SeededMatrix | None = None

    def fit(self, context: FitContext) -> None:
        """Nothing to fit: the matrices depend only on the seed and each layer's shape."""

    def _layer(self, index: int, layer: LayerFactors) -> torch.Tensor:
        c, like = self.config, layer.output_grads
        key = (index, layer.in_features, like.shape[-1])
        if key not in self._matrices:
            self._matrices[key] = (
                SeededMatrix(key[1], c.dim_in, _derived_seed(c.seed, 2 * index + 1), gaussian_sampler),
                SeededMatrix(key[2], c.dim_out, _derived_seed(c.seed, 2 * index + 2), gaussian_sampler),
            )
        p_in, p_out = (m.matrix(like.device).to(like.dtype) for m in self._matrices[key])
        return layer.project(p_in, p_out)

    def project(self, vectors: FactoredGradients) -> torch.Tensor:
        """``(b, p)`` factored gradients -> ``Tensor[b, n_layers * dim_in * dim_out (+ fallback_dim)]``.

        Raises:
            TypeError: ``vectors`` is a plain tensor (from a source other than ``factored``).
        """
        if not isinstance(vectors, FactoredGradients):
            raise TypeError(
                f"projector 'kronecker' needs per-layer factors from the 'factored' gradient source, got a "
                f"{type(vectors).__name__}; set \"gradients\": \"factored\" in the spec, or use a dense projector "
                "such as 'gaussian'"
            )
        feats = [self._layer(i, layer) for i, layer in enumerate(vectors.layers)]
        if vectors.dense_names:
            c, q = self.config, vectors.dense.shape[1]
            if self._fallback is None or self._fallback.p != q:
                k = c.fallback_dim or c.dim_in * c.dim_out
                self._fallback = SeededMatrix(q, k, _derived_seed(c.seed, 0), gaussian_sampler)
            feats.append(self._fallback.project(vectors.dense))
        return torch.cat(feats, dim=1)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [FactoredGradientSource, KroneckerProjector]
