"""kronfluence 1.0.1's K-FAC / EK-FAC influence on a benchmark problem, beside attrkit's ``if`` rows.

``attrkit bench SETTING --compare kronfluence`` runs, for each ``if`` row whose solver is
``ekfac`` (or ``kfac``), kronfluence's ``Analyzer`` (``fit_all_factors`` then
``compute_pairwise_scores``) on a copy of the same model, the same training set and
targets, in the same batches (the loaders' datasets, batch sizes and ``collate_fn``), with
the same loss, target and damping; :mod:`attrkit_bench.compare.counterparts` maps a spec
to it. What is matched, and how:

* **Curvature.** Both fit the *empirical* Fisher of the mean training loss (true labels:
  ``FactorArguments(use_empirical_fisher=True)``; kronfluence's own default samples the
  labels from the model, the true Fisher), on the whole training set
  (``covariance_max_examples=None``, ``lambda_max_examples=None``). Per layer both take
  the Kronecker eigenbases of ``A`` (inputs with a column of ones for the bias, averaged
  over examples and positions) and ``G`` (output gradients), and EK-FAC's corrected
  eigenvalues ``Λ = (1/n) Σ_i (Q_Gᵀ G_i Q_A)²`` from the per-example gradients ``G_i``.
  kronfluence averages ``G`` over positions, attrkit over examples (sum over positions):
  for a layer applied once per example they are equal; for one applied at several
  positions (sequences, convolutions) ``G`` differs by a constant factor per layer, which
  changes neither the eigenbasis nor EK-FAC's ``Λ`` — but scales K-FAC's eigenvalue
  products, so there the same ``λ`` damps kronfluence's K-FAC more (EK-FAC is unaffected).
  Padding: attrkit's ``A`` includes padded positions, so by default kronfluence gets no
  attention mask either (``mask_padding=False``); ``mask_padding=True`` passes the batches'
  ``attention_mask``, kronfluence's recommended use for padded text.
* **Damping.** attrkit's ``regularization`` ``λ`` is absolute, added to ``Λ`` (to
  ``λ_G λ_Aᵀ`` for K-FAC) in each layer's eigenbasis: ``(F_l + λI)⁻¹``. kronfluence's
  ``ScoreArguments(damping_factor=λ)`` is also absolute and added to the same eigenvalues
  (its ``None`` would be a heuristic, ``0.1 × mean(Λ)`` per layer, never used here). The
  same number is passed to both sides.
* **Sign and scale.** kronfluence's pairwise score is ``∇f(query)ᵀ (F + λI)⁻¹ ∇L(train)``
  with no minus sign — positive when up-weighting the training example lowers the
  query's measurement, i.e. helps it — which is attrkit's sign convention (positive = a
  proponent) and attrkit's ``if`` score itself: no sign flip, no rescaling
  (:data:`SIGN` is ``+1``).
* **Parameters.** kronfluence tracks only ``nn.Linear`` and ``nn.Conv2d`` modules. It
  is given the modules that hold attrkit's differentiated parameters (the spec's
  gradient ``params`` patterns); the parameters it cannot cover — LayerNorm, embeddings,
  ``nn.Conv1d``, weights shared between modules: attrkit's diagonal-Fisher fallback —
  are listed by :func:`coverage` and left out of kronfluence's scores.

Precision: kronfluence's defaults (covariances, ``Λ`` and scores in float32,
eigendecompositions in float64); attrkit fits in float64. Both run on the problem's
device (kronfluence with ``cpu=True`` off CUDA), without a warm-up, as dattri's
counterparts do. kronfluence writes its factors and scores under a temporary folder,
removed afterwards.

kronfluence is optional and imported lazily. ``pip install kronfluence`` would also
install torchvision, which replaces the installed torch; install it without its
dependencies and add the ones it imports (:data:`INSTALL`). It imports without torchvision.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset

from attrkit_bench.types import LossFn

__all__ = ["INSTALL", "SIGN", "STRATEGIES", "Coverage", "coverage", "kronfluence_scores", "kronfluence_version",
           "require_kronfluence"]

#: How to install kronfluence 1.0.1 without its torchvision dependency (which would replace torch).
INSTALL = "pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum accelerate safetensors"
#: kronfluence's score times ``SIGN`` is attrkit's (both: positive = proponent, see the module docstring).
SIGN = 1.0
#: attrkit solver → kronfluence ``FactorArguments.strategy``.
STRATEGIES: Mapping[str, str] = {"ekfac": "ekfac", "kfac": "kfac"}
#: The module types kronfluence 1.0.1 tracks (matched by exact type, as it does).
_TRACKED = (torch.nn.Linear, torch.nn.Conv2d)


def require_kronfluence() -> None:
    """Import kronfluence or raise an ``ImportError`` saying how to install it (:data:`INSTALL`)."""
    try:
        importlib.import_module("kronfluence.analyzer")
    except ImportError as exc:
        raise ImportError(f"--compare kronfluence needs kronfluence 1.0.1 without torchvision: {INSTALL} "
                          f"(accelerate also needs psutil, pyyaml and huggingface_hub) ({exc})") from exc


def kronfluence_version() -> str:
    """The installed kronfluence distribution's version."""
    return importlib.metadata.version("kronfluence")


@attrs.frozen(kw_only=True)
class Coverage:
    """Which of attrkit's differentiated parameters kronfluence covers.

    Attributes:
        modules: the ``nn.Linear`` / ``nn.Conv2d`` modules kronfluence is told to track.
        covered: attrkit's parameters those modules hold.
        uncovered: attrkit's other parameters (not in a tracked module), left out of
            kronfluence's scores, each with its module's type: ``"ln.weight (LayerNorm)"``.
        extra: parameters of tracked modules that attrkit does not differentiate
            (a bias its ``params`` patterns leave out, a frozen one): kronfluence includes them.
        sizes: ``(covered, total)`` numbers of attrkit's parameter entries.
    """

    modules: tuple[str, ...]
    covered: tuple[str, ...]
    uncovered: tuple[str, ...]
    extra: tuple[str, ...]
    sizes: tuple[int, int]

    def note(self) -> str:
        """One line for the report: what kronfluence covers of attrkit's parameters."""
        covered, total = self.sizes
        line = (f"kronfluence tracks {len(self.modules)} nn.Linear/nn.Conv2d modules: {covered:,} of attrkit's "
                f"{total:,} parameter entries")
        if self.uncovered:
            kinds = Counter(name.rpartition(" (")[2].rstrip(")") for name in self.uncovered)
            line += (f"; it leaves out {len(self.uncovered)} parameters ({total - covered:,} entries) of "
                     + ", ".join(f"{kind} ×{count}" for kind, count in kinds.items()))
        if self.extra:
            line += f"; it also includes {', '.join(self.extra)}, which attrkit does not differentiate"
        return line


def _root_tracked(model: torch.nn.Module) -> bool:
    return type(model) in _TRACKED


def coverage(model: torch.nn.Module, names: Sequence[str]) -> Coverage:
    """The modules kronfluence can track for attrkit's parameters ``names`` (``select_parameters``'s).

    A module is tracked when it is exactly ``nn.Linear`` or ``nn.Conv2d``, holds one of
    ``names`` and shares no parameter with another module (kronfluence would see only this
    module's use of a shared weight). A model that *is* such a module is tracked as
    ``"model"`` (kronfluence cannot wrap a root module, so :func:`kronfluence_scores`
    wraps it).
    """
    chosen, shapes = set(names), {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    modules, covered, extra = [], [], []
    for mname, module in model.named_modules():
        if type(module) not in _TRACKED:
            continue
        own = [(f"{mname}.{k}" if mname else k, p) for k, p in module.named_parameters(recurse=False)]
        if not any(n in chosen for n, _ in own) or any(owners[id(p)] > 1 for _, p in own):
            continue
        modules.append(mname or "model")
        covered += [n for n, _ in own if n in chosen]
        extra += [n for n, _ in own if n not in chosen]
    kinds = {mname: type(m).__name__ for mname, m in model.named_modules()}
    uncovered = [f"{n} ({kinds.get(n.rpartition('.')[0], type(model).__name__)})" for n in names if n not in covered]
    size = lambda ns: sum(shapes[n].numel() for n in ns)  # noqa: E731
    return Coverage(modules=tuple(modules), covered=tuple(covered), uncovered=tuple(uncovered), extra=tuple(extra),
                    sizes=(size(covered), size(names)))


class _Root(torch.nn.Module):
    """A model that is itself a Linear/Conv2d, one level down (kronfluence wraps only submodules)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class _Batches(Dataset):
    """Ready-made batches as a dataset of one-batch items (read with batch size 1 and :func:`_only`)."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


def _only(items: list[Any]) -> Any:
    return items[0]


def _as_dataset(loader: Iterable[Any]) -> tuple[Dataset, int, Callable[[list[Any]], Any] | None]:
    """``(dataset, batch size, collate_fn)`` giving the same batches as ``loader``, for kronfluence."""
    if isinstance(loader, DataLoader) and loader.batch_size is not None:
        return loader.dataset, loader.batch_size, loader.collate_fn
    return _Batches(loader), 1, _only


def _task(loss_fn: LossFn, target_fn: LossFn, modules: Sequence[str], mask_padding: bool) -> Any:
    """A ``kronfluence.Task``: summed loss (true labels) and summed target, the tracked modules."""
    from kronfluence.task import Task

    class _AttrkitTask(Task):
        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            if sample:  # only with use_empirical_fisher=False, which this runner never sets
                raise RuntimeError("the attrkit bench task has no sampled-label loss (true Fisher); the comparison "
                                   "sets use_empirical_fisher=True, so kronfluence never asks for it")
            return loss_fn(model, batch).sum()

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
            return target_fn(model, batch).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return list(modules)

        def get_attention_mask(self, batch: Any) -> torch.Tensor | None:
            if mask_padding and isinstance(batch, Mapping):
                return batch.get("attention_mask")
            return None

    return _AttrkitTask()


def kronfluence_scores(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train: Iterable[Any],
    targets: Iterable[Any],
    names: Sequence[str],
    regularization: float,
    *,
    strategy: str = "ekfac",
    target_fn: LossFn | None = None,
    mask_padding: bool = False,
) -> Callable[[], torch.Tensor]:
    """``scores()`` running kronfluence's influence with ``strategy`` on a copy of ``model``.

    Args:
        model: the trained model (eval mode; kronfluence gets a deep copy, which it modifies).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example training loss.
        train: the training set, fixed order: a ``DataLoader`` (its dataset, batch size and
            ``collate_fn`` are given to kronfluence) or any re-iterable of batches.
        targets: the targets, likewise.
        names: attrkit's differentiated parameters (``select_parameters``): kronfluence
            tracks the modules :func:`coverage` finds for them.
        regularization: the damping ``λ >= 0``, absolute, as attrkit's (module docstring).
        strategy: ``"ekfac"`` or ``"kfac"``.
        target_fn: the attributed target (default ``loss_fn``), kronfluence's measurement.
        mask_padding: give kronfluence the dict batches' ``attention_mask`` (padded
            positions out of ``A``); ``False`` matches attrkit.

    Returns:
        ``scores() -> Tensor[n_targets, n_train]``, float32 CPU, in attrkit's sign.

    Raises:
        ValueError: no module to track, or a negative ``regularization``.
    """
    if not regularization >= 0:
        raise ValueError(f"regularization must be >= 0, got {regularization}")
    found = coverage(model, names)
    if not found.modules:
        raise ValueError("kronfluence tracks only nn.Linear and nn.Conv2d modules; attrkit's parameters hold none")
    measure = target_fn or loss_fn

    def run() -> torch.Tensor:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        copied = copy.deepcopy(model).eval()
        copied = _Root(copied) if _root_tracked(copied) else copied
        task = _task(loss_fn, measure, found.modules, mask_padding)
        device = next(copied.parameters()).device
        train_set, train_batch, train_collate = _as_dataset(train)
        target_set, target_batch, target_collate = _as_dataset(targets)
        factor_args = FactorArguments(strategy=STRATEGIES[strategy], use_empirical_fisher=True,
                                      covariance_max_examples=None, lambda_max_examples=None)
        score_args = ScoreArguments(damping_factor=float(regularization))
        with tempfile.TemporaryDirectory(prefix="attrkit-kronfluence-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.cuda.amp.GradScaler deprecation, on every call
            analyzer = Analyzer(analysis_name="attrkit-bench", model=prepare_model(copied, task), task=task,
                                cpu=device.type != "cuda", log_level=logging.WARNING, disable_tqdm=True,
                                output_dir=folder)
            analyzer.fit_all_factors(factors_name=strategy, dataset=train_set, per_device_batch_size=train_batch,
                                     dataloader_kwargs=DataLoaderKwargs(collate_fn=train_collate),
                                     factor_args=factor_args)
            scores = _pairwise(analyzer, strategy, target_set, target_batch, train_set, train_batch,
                               target_collate, train_collate, score_args)
        return (SIGN * scores).detach().float().cpu()

    return run


def _pairwise(analyzer: Any, factors: str, target_set: Dataset, target_batch: int, train_set: Dataset,
              train_batch: int, target_collate: Any, train_collate: Any, score_args: Any) -> torch.Tensor:
    """kronfluence's ``[n_targets, n_train]`` pairwise scores, summed over modules.

    kronfluence reads the query and training sets with one ``collate_fn``; where the two
    loaders collate differently (one a list of ready-made batches) both are read as lists.
    """
    from kronfluence.utils.dataset import DataLoaderKwargs

    if target_collate is not train_collate:
        target_set = _Batches(DataLoader(target_set, batch_size=target_batch, collate_fn=target_collate))
        train_set = _Batches(DataLoader(train_set, batch_size=train_batch, collate_fn=train_collate))
        target_batch = train_batch = 1
        train_collate = _only
    analyzer.compute_pairwise_scores(scores_name="scores", factors_name=factors, query_dataset=target_set,
                                     train_dataset=train_set, per_device_query_batch_size=target_batch,
                                     per_device_train_batch_size=train_batch, score_args=score_args,
                                     dataloader_kwargs=DataLoaderKwargs(collate_fn=train_collate))
    return analyzer.load_pairwise_scores("scores")["all_modules"]
