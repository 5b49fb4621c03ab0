"""Digests of tensors, batches, model states and functions: what a store or a check compares.

A digest is a hex string that changes when the values change: the bytes of every tensor
(with its dtype and shape), in a fixed order. Tensors of any dtype and shape are accepted,
0-dim buffers included (batch-norm's ``num_batches_tracked``), on any device (copied to
the CPU to be read).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["batch_digest", "callable_identity", "state_digest", "tensor_bytes", "update_tensor"]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of ``tensor`` (CPU, contiguous, flattened), without a copy when it is
    already a contiguous CPU tensor."""
    flat = tensor.detach().reshape(-1).cpu().contiguous()
    if flat.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def update_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s dtype, shape and bytes into a ``hashlib`` object."""
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor_bytes(tensor))


def batch_digest(batch: Any) -> str:
    """Hex digest of a batch: its structure and every tensor leaf (other leaves by ``repr``)."""
    leaves, spec = tree_flatten(batch)
    digest = hashlib.sha256(repr(spec).encode())
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            update_tensor(digest, leaf)
        else:
            digest.update(repr(leaf).encode())
    return digest.hexdigest()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Hex digest of a ``{name: Tensor}`` state (names sorted)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        update_tensor(digest, state[name])
    return digest.hexdigest()


def _describe(value: Any, seen: set[int], depth: int = 0) -> str:
    """A stable text for what a function computes with: code, constants, captured values."""
    if depth > 4 or id(value) in seen:
        return "..."
    seen.add(id(value))
    if isinstance(value, functools.partial):
        parts = [_describe(value.func, seen, depth + 1)]
        parts += [_describe(a, seen, depth + 1) for a in value.args]
        parts += [f"{k}={_describe(v, seen, depth + 1)}" for k, v in sorted(value.keywords.items())]
        return f"partial({', '.join(parts)})"
    if inspect.ismethod(value):
        return f"method({_describe(value.__func__, seen, depth + 1)}, {type(value.__self__).__qualname__})"
    code = getattr(value, "__code__", None)
    if code is not None:
        consts = [_describe(c, seen, depth + 1) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
        cells = [_describe(cell.cell_contents, seen, depth + 1) for cell in (value.__closure__ or ())
                 if _has_contents(cell)]
        defaults = [_describe(d, seen, depth + 1) for d in (value.__defaults__ or ())]
        name = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
        return f"{name}:{code.co_code.hex()}:{consts}:{code.co_names}:{cells}:{defaults}"
    if hasattr(value, "co_code"):
        return f"code:{value.co_code.hex()}:{value.co_consts!r}"
    if isinstance(value, torch.Tensor):
        return f"tensor:{state_digest({'': value})}"
    if isinstance(value, torch.nn.Module):
        return f"module:{type(value).__qualname__}"  # its weights are fingerprinted separately
    if isinstance(value, (int, float, complex, str, bytes, bool, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return f"[{', '.join(_describe(v, seen, depth + 1) for v in value)}]"
    if callable(value) and not isinstance(value, type):
        call = getattr(type(value), "__call__", None)
        state = getattr(value, "__dict__", {})
        fields = ", ".join(f"{k}={_describe(v, seen, depth + 1)}" for k, v in sorted(state.items()))
        return f"{type(value).__module__}.{type(value).__qualname__}({fields}):{_describe(call, seen, depth + 1)}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell (a name not yet bound)
        return False
    return True


def callable_identity(fn: Callable[..., Any] | None) -> str:
    """Hex digest of what ``fn`` computes: its name, bytecode, constants, default arguments and
    captured values (numbers, strings, tensors; closures and ``functools.partial`` followed).

    Two functions that compute differently (another loss, a scaled loss, another captured
    constant) get different identities; the same function gets the same identity in every
    process. A captured ``nn.Module`` counts by its type only (weights are fingerprinted
    separately). ``None`` has an identity of its own.
    """
    return hashlib.sha256(_describe(fn, set()).encode()).hexdigest()
