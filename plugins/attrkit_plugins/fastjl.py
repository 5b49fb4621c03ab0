"""The ``fastjl`` projector: TRAK's fast_jl CUDA kernel, optional.

Always registered. Where ``fast_jl`` does not import or CUDA is absent it is listed by
``attrkit plugins`` as unavailable with the reason and the install command, and
composing it fails — attrkit never falls back to another projector silently.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from types import ModuleType
from typing import ClassVar

import attrs
import torch

from attrkit.plugin import (
    ArgumentError,
    ComponentUnavailableError,
    FitContext,
    NotFittedError,
    Projector,
    StateValue,
    hookimpl,
    int_field,
    seed_field,
)

INSTALL = "pip install 'attrkit[gpu]' on a machine with CUDA and nvcc"
#: fast_jl kernels exist for these batch sizes; batches are zero-padded up to one.
KERNEL_BATCHES = (8, 16, 32)


def _import_fast_jl() -> ModuleType | str:
    """The ``fast_jl`` module, or why it cannot be imported."""
    try:
        return importlib.import_module("fast_jl")
    except Exception as exc:  # a broken CUDA build raises OSError/ImportError/RuntimeError
        return f"fast_jl does not import ({type(exc).__name__}: {exc}); {INSTALL}"


def _require_cuda(vectors: torch.Tensor) -> None:
    if not vectors.is_cuda:
        raise ArgumentError(f"fastjl projects CUDA tensors only, got a tensor on {vectors.device}; move the model to CUDA")


@attrs.frozen(kw_only=True)
class FastJLConfig:
    """Config of ``fastjl``.

    Attributes:
        dim: output dimension ``k``, a multiple of 512 (a fast_jl requirement).
        seed: fixes the projection.
        distribution: ``"rademacher"`` or ``"normal"`` entries.
        dtype: ``"float32"`` or ``"float16"`` input to the kernel.
    """

    dim: int = int_field(2048, ge=512)
    seed: int = seed_field(per_member=True, ge=0)
    distribution: str = attrs.field(default="rademacher", validator=attrs.validators.in_(("rademacher", "normal")))
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(("float32", "float16")))

    @dim.validator
    def _multiple_of_512(self, attribute: attrs.Attribute, value: int) -> None:
        if value % 512:
            raise ArgumentError(f"'dim' must be a multiple of 512 for fast_jl: {value}")


class FastJLProjector(Projector):
    """``Tensor[b, p] -> Tensor[b, dim]`` by fast_jl's CUDA kernel, scaled by ``1/sqrt(dim)``.

    The matrix is generated on the fly inside the kernel from ``seed``. Batches are
    zero-padded to a kernel batch size (8, 16 or 32). An all-zero output for a non-zero
    input (a known failure of some fast_jl builds) raises instead of returning zeros.
    """

    name: ClassVar[str] = "fastjl"
    Config: ClassVar[type] = FastJLConfig

    def __init__(self, config: FastJLConfig):
        super().__init__(config)
        self._num_sms = 0

    @classmethod
    def availability(cls) -> str | None:
        """``None`` when fast_jl imports and CUDA is present, else the reason and the fix."""
        module = _import_fast_jl()
        if isinstance(module, str):
            return module
        if not torch.cuda.is_available():
            return f"CUDA is not available (torch {torch.__version__}); fastjl runs on NVIDIA GPUs only"
        return None

    def fit(self, context: FitContext) -> None:
        """Check the backend and read the device's multiprocessor count."""
        why = self.availability()
        if why is not None:
            raise ComponentUnavailableError(f"projector 'fastjl' is unavailable: {why}")
        self._num_sms = torch.cuda.get_device_properties(context.task.device).multi_processor_count

    def state_dict(self) -> dict[str, StateValue]:
        """``{"num_sms": …}``: the kernel's launch width (the matrix comes from the seed, in the kernel).

        Raises:
            NotFittedError: before ``fit``.
        """
        if not self._num_sms:
            raise NotFittedError("fastjl projector cannot be saved before fit(context)")
        return {"num_sms": self._num_sms}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Restore the launch width, after checking fast_jl and CUDA are usable here.

        Raises:
            ComponentUnavailableError: fast_jl or CUDA is not available.
        """
        why = self.availability()
        if why is not None:
            raise ComponentUnavailableError(f"projector 'fastjl' is unavailable: {why}")
        self._num_sms = int(state["num_sms"])

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]`` float32 on the input's device."""
        _require_cuda(vectors)
        module = _import_fast_jl()
        if isinstance(module, str):
            raise ComponentUnavailableError(module)
        b = vectors.shape[0]
        kernel = next((n for n in KERNEL_BATCHES if b <= n), KERNEL_BATCHES[-1])
        padded = math.ceil(b / kernel) * kernel
        x = torch.zeros(padded, vectors.shape[1], device=vectors.device, dtype=getattr(torch, self.config.dtype))
        x[:b] = vectors
        fn = getattr(module, f"project_{self.config.distribution}_{kernel}")
        out = fn(x.contiguous(), self.config.dim, self.config.seed, self._num_sms)[:b].float()
        if not out.any() and vectors.any():
            raise RuntimeError(
                "fast_jl returned all zeros for a non-zero input: this fast_jl build is broken for this CUDA "
                "version (rebuild it for your GPU's architecture)"
            )
        return out / math.sqrt(self.config.dim)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [FastJLProjector]
