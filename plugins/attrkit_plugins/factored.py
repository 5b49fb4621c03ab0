"""LoGra-style components: gradient source ``factored`` and projector ``kronecker``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    FACTORED,
    PER_EXAMPLE,
    ArgumentTypeError,
    AttributionTask,
    AttrkitWarning,
    FitContext,
    Member,
    NotFittedError,
    ParameterGradients,
    Projector,
    StateValue,
    frozen_field,
    hookimpl,
    int_field,
    params_field,
    positive_int,
    seed_field,
    to_device,
)
from attrkit.functional.factored import FactorPlan, factored_gradients, plan_factors
from attrkit.functional.gradient_factors import FactoredGradients, LayerFactors
from attrkit.functional.gradients import select_parameters
from attrkit.functional.projection import SeededMatrix, block_generator, gaussian_sampler


@attrs.frozen(kw_only=True)
class FactoredConfig:
    """Config of ``factored``.

    Attributes:
        params: ``fnmatch`` patterns of parameter names to differentiate; default all the
            trainable ones.
        frozen: include parameters with ``requires_grad=False`` (frozen); by default only
            the trainable parameters are differentiated, and ``params`` chooses among them.
    """

    params: tuple[str, ...] = params_field()
    frozen: bool = frozen_field()


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
    provides: ClassVar[frozenset[str]] = frozenset({PER_EXAMPLE, FACTORED})

    def __init__(self, config: FactoredConfig):
        super().__init__(config)
        self._warned = False

    def _grads(self, task: AttributionTask, fn: Any, member: Member, batch: Any) -> FactoredGradients:
        plan = plan_factors(task.model, self.names(task))
        norms = {n for layer in plan.norms for n in layer[1:] if n}  # exact and cheap, from the same pass
        others = [n for n in plan.fallback if n not in norms]
        if others and not self._warned:
            self._warned = True
            q = sum(member.state[n].numel() for n in others)
            owners = dict.fromkeys(n.rpartition(".")[0] for n in others)
            described = [f"{m or '<root>'} ({type(task.model.get_submodule(m)).__name__})" for m in owners]
            warnings.warn(
                f"gradient source 'factored' cannot factor {', '.join(described)}: their "
                f"{len(others)} parameter tensors ({q} entries) use exact per-example gradients",
                AttrkitWarning, stacklevel=3,
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
    fallback_dim: int | None = int_field(None, ge=1, optional=True, examples=(None, 8))
    seed: int = seed_field(per_member=True)


def _derived_seed(seed: int, index: int) -> int:
    return block_generator(seed, index, torch.device("cpu")).initial_seed()


class KroneckerProjector(Projector):
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
    Config: ClassVar[type] = KroneckerConfig
    requires: ClassVar[frozenset[str]] = frozenset({FACTORED})
    #: The engine hands it factored gradients whole.

    def __init__(self, config: KroneckerConfig):
        super().__init__(config)
        self._matrices: dict[tuple[int, int, int], tuple[SeededMatrix, SeededMatrix]] = {}
        self._fallback: SeededMatrix | None = None
        self._plan: FactorPlan | None = None
        self._sizes: dict[str, int] = {}
        self._out_dims: list[int] = []

    def fit(self, context: FitContext) -> None:
        """Record the layer layout of the gradient vectors, for dense inputs.

        Factored inputs need nothing (the matrices depend only on the seed and each
        layer's shape); a dense ``Tensor[b, p]`` — e.g. a test gradient already multiplied
        by a parameter-space solver's inverse curvature — is split along this layout.
        """
        model, source = context.task.model, context.gradients
        names = source.names(context.task) if source is not None else select_parameters(model, ("*",))
        self._plan = plan_factors(model, names)
        params = dict(model.named_parameters())
        self._sizes = {n: params[n].numel() for n in names}
        self._out_dims = [model.get_submodule(module).weight.shape[0] for module, _, _ in self._plan.layers]

    def state_dict(self) -> dict[str, StateValue]:
        """The recorded layer layout, as JSON strings (the matrices come again from the seed).

        Raises:
            NotFittedError: before ``fit``.
        """
        if self._plan is None:
            raise NotFittedError("kronecker projector cannot be saved before fit(context)")
        return {"plan": json.dumps(attrs.asdict(self._plan)), "sizes": json.dumps(self._sizes),
                "out_dims": json.dumps(self._out_dims)}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Restore the layer layout of :meth:`state_dict`."""
        plan = json.loads(state["plan"])
        self._plan = FactorPlan(names=tuple(plan["names"]), layers=tuple(tuple(x) for x in plan["layers"]),
                                fallback=tuple(plan["fallback"]), fallback_modules=tuple(plan["fallback_modules"]),
                                norms=tuple(tuple(x) for x in plan.get("norms", ())))
        self._sizes, self._out_dims = json.loads(state["sizes"]), json.loads(state["out_dims"])

    def _pair(self, index: int, in_features: int, d_out: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_in [in_features, dim_in], P_out [d_out, dim_out])`` of layer ``index``."""
        c, key = self.config, (index, in_features, d_out)
        if key not in self._matrices:
            self._matrices[key] = (
                SeededMatrix(in_features, c.dim_in, _derived_seed(c.seed, 2 * index + 1), gaussian_sampler),
                SeededMatrix(d_out, c.dim_out, _derived_seed(c.seed, 2 * index + 2), gaussian_sampler),
            )
        p_in, p_out = (m.matrix(like.device).to(like.dtype) for m in self._matrices[key])
        return p_in, p_out

    def _layer(self, index: int, layer: LayerFactors) -> torch.Tensor:
        like = layer.output_grads
        return layer.project(*self._pair(index, layer.in_features, like.shape[-1], like))

    def _fallback_features(self, dense: torch.Tensor) -> torch.Tensor:
        c, q = self.config, dense.shape[1]
        if self._fallback is None or self._fallback.p != q:
            self._fallback = SeededMatrix(q, c.fallback_dim or c.dim_in * c.dim_out, _derived_seed(c.seed, 0), gaussian_sampler)
        return self._fallback.project(dense)

    def _project_dense(self, vectors: torch.Tensor) -> torch.Tensor:
        """The same features from materialised gradients ``Tensor[b, p]`` (``P_outᵀ Ḡ P_in`` per layer)."""
        plan, b = self._plan, vectors.shape[0]
        parts = dict(zip(plan.names, vectors.split([self._sizes[n] for n in plan.names], dim=1)))
        feats = []
        for index, (_, weight, bias) in enumerate(plan.layers):
            d_out = self._out_dims[index]
            columns = [parts[weight].reshape(b, d_out, -1)] if weight else []
            columns += [parts[bias].reshape(b, d_out, 1)] if bias else []
            extended = torch.cat(columns, dim=2)
            p_in, p_out = self._pair(index, extended.shape[2], d_out, extended)
            feats.append(torch.einsum("ok,boi,ij->bkj", p_out, extended, p_in).reshape(b, -1))
        if plan.fallback:
            feats.append(self._fallback_features(torch.cat([parts[n] for n in plan.fallback], dim=1)))
        return torch.cat(feats, dim=1)

    def project(self, vectors: FactoredGradients) -> torch.Tensor:
        """``(b, p)`` factored gradients -> ``Tensor[b, n_layers * dim_in * dim_out (+ fallback_dim)]``.

        Raises:
            TypeError: ``vectors`` is a plain tensor (from a source other than ``factored``).
        """
        if not isinstance(vectors, FactoredGradients):
            if self._plan is None:
                raise ArgumentTypeError(
                    f"projector 'kronecker' needs per-layer factors from the 'factored' gradient source, got a "
                    f"{type(vectors).__name__} before fit(context); set \"gradients\": \"factored\" in the spec, "
                    "or use a dense projector such as 'gaussian'"
                )
            return self._project_dense(vectors)
        feats = [self._layer(i, layer) for i, layer in enumerate(vectors.layers)]
        if vectors.dense_names:
            feats.append(self._fallback_features(vectors.dense))
        return torch.cat(feats, dim=1)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [FactoredGradientSource, KroneckerProjector]
