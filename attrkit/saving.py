"""Saved attributors: a folder that ``attributor.save(path)`` writes and :func:`load` reads in another process.

A saved folder holds no code, only data::

    attrkit.json   the manifest: format and version, the method's resolved spec (composed again
                   at load with the caller's registry), each member's label, weight and the
                   digest of every tensor of its weights, the identity of the loss and target
                   functions, the method's own entries (``fitted``), the SHA-256 of ``state.pt``,
                   and the manifest's own SHA-256
    state.pt       one flat ``{key: Tensor | int | float | str | None}`` written by ``torch.save``
                   and read by ``torch.load(weights_only=True)``: fitted parts' ``state_dict``\\ s,
                   groups, example weights... (a pickled object is refused, never run)
    ...            the method's other files (a gradient method's training features: ``features/``)

What :func:`load` checks, each refusal a :class:`~attrkit.errors.LoadError` naming what differs
and the fix: that the folder is a saved attributor of this format version, unaltered (the
manifest's and ``state.pt``'s checksums; the method checks its other files); and — in the
method's :meth:`~attrkit.protocols.Attributor.restore`, through :meth:`Saved.check_members` —
that the task's members have the weights the attributor was fitted at (for a task without
checkpoints the model's current weights, else the checkpoints; ensembles' members as the spec
makes them), naming the tensors that differ. A loss or target function whose identity
(:func:`attrkit.fingerprint.callable_identity`) differs from the fitted one only warns: the
same function imported under another module name has another identity.

Saving writes a temporary sibling folder and moves it into place, so ``path`` holds either
the old save or the new one; it refuses a ``path`` that holds anything but a saved attributor.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from attrkit import distributed
from attrkit.compose import compose
from attrkit.context import Member
from attrkit.errors import ArgumentTypeError, AttrkitWarning, LoadError, SaveError
from attrkit.fingerprint import callable_identity, state_digest
from attrkit.task import AttributionTask
from attrkit.types import StateValue

if TYPE_CHECKING:
    from attrkit.protocols import Attributor
    from attrkit.registry import Registry

__all__ = ["FORMAT", "VERSION", "Saved", "load", "read", "save_attributor"]

#: The manifest's ``format`` and the version of the layout this attrkit writes and reads.
FORMAT, VERSION = "attrkit-saved-attributor", 1
MANIFEST, STATE = "attrkit.json", "state.pt"
_REFIT = "fit the attributor again for this task (attrkit.compose(spec, task).fit(train))"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_sha256(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _member_record(member: Member) -> dict[str, Any]:
    return {"label": member.label, "weight": float(member.weight),
            "tensors": {name: state_digest({name: t}) for name, t in member.state.items()}}


def _functions(task: AttributionTask) -> dict[str, str]:
    return {"loss_fn": callable_identity(task.loss_fn), "target": callable_identity(task.target)}


def _checked_state(tensors: Mapping[str, Any]) -> dict[str, StateValue]:
    """``tensors`` (detached), after checking it is plain data ``torch.load(weights_only=True)`` reads."""
    bad = [f"{key!r} ({type(value).__name__})" for key, value in tensors.items()
           if not isinstance(key, str) or not isinstance(value, (torch.Tensor, int, float, str, type(None)))]
    if bad:
        raise SaveError(f"cannot save {', '.join(bad)}: saved state holds only tensors, numbers, strings and None "
                        "(nested data as several keys or a JSON string)")
    return {key: value.detach() if isinstance(value, torch.Tensor) else value for key, value in tensors.items()}


def _check_target(path: Path) -> None:
    """Refuse a ``path`` that holds anything but a saved attributor (never overwrite the user's files)."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / MANIFEST).is_file())):
        raise SaveError(f"{path} exists and is not a saved attributor: save into a new or empty folder (or over an "
                        "earlier save)")


def _move_into_place(tmp: Path, path: Path) -> None:
    """Replace ``path`` (absent, empty, or an earlier save) by the folder ``tmp``."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_attributor(
    path: str | os.PathLike, attributor: Attributor, members: Sequence[Member], tensors: Mapping[str, Any],
    fitted: Mapping[str, Any] | None = None, files: Callable[[Path], Mapping[str, Any]] | None = None,
) -> None:
    """Write a fitted attributor to the folder ``path``: what a method's ``save`` calls.

    Args:
        path: the folder (created; an earlier save there is replaced).
        attributor: the fitted attributor, built by :func:`attrkit.compose` (its spec is saved).
        members: the members it was fitted at (their label, weight and weight digests are saved;
            :meth:`Saved.check_members` compares them at load).
        tensors: ``{key: Tensor | int | float | str | None}``, written to ``state.pt``.
        fitted: JSON-able entries of the method's own, given back as :attr:`Saved.fitted`.
        files: ``files(folder) -> JSON-able entries`` writes more files into the folder being
            saved; its entries join ``fitted``.

    Raises:
        SaveError: an attributor not built by ``attrkit.compose``, a distributed run, a value of
            ``tensors`` that is not plain data, or a ``path`` that holds other files.
    """
    path = Path(path)
    if attributor.resolved is None:
        raise SaveError(f"method {attributor.name!r} was not built by attrkit.compose, so its spec is unknown and it "
                        "cannot be composed again at load; build it with attrkit.compose(spec, task)")
    if distributed.world() is not None:
        raise SaveError("save() writes from one process: in a torch.distributed run, fit and save in a single "
                        "process (loading works in a distributed run)")
    state = _checked_state(tensors)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        extra = dict(files(tmp)) if files is not None else {}
        with open(tmp / STATE, "wb") as f:
            torch.save(state, f)
        body = {
            "format": FORMAT, "version": VERSION, "attrkit": metadata.version("attrkit"), "method": attributor.name,
            "spec": attributor.resolved.spec.to_dict(), "members": [_member_record(m) for m in members],
            "functions": _functions(attributor.task), "state": {"file": STATE, "sha256": _sha256(tmp / STATE)},
            "fitted": {**(fitted or {}), **extra},
        }
        (tmp / MANIFEST).write_text(json.dumps({**body, "sha256": _json_sha256(body)}, indent=1, sort_keys=True))
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@attrs.frozen(kw_only=True)
class Saved:
    """A saved attributor, read back and checked: what :meth:`Attributor.restore` is given.

    Attributes:
        path: its folder.
        spec: the resolved spec (a dict).
        members: per member ``{"label", "weight", "tensors": {name: digest}}``.
        functions: ``{"loss_fn", "target"}``: identities of the functions it was fitted with.
        fitted: the method's own JSON entries.
        tensors: ``state.pt``'s ``{key: Tensor | int | float | str | None}`` (tensors on the CPU).
    """

    path: Path
    spec: Mapping[str, Any]
    members: Sequence[Mapping[str, Any]]
    functions: Mapping[str, str]
    fitted: Mapping[str, Any]
    tensors: Mapping[str, StateValue]

    def part(self, prefix: str, device: torch.device | None = None) -> dict[str, StateValue]:
        """The entries of :attr:`tensors` under ``prefix``, without it (tensors moved to ``device``)."""
        return {key.removeprefix(prefix): value.to(device) if device is not None and isinstance(value, torch.Tensor)
                else value for key, value in self.tensors.items() if key.startswith(prefix)}

    def check_members(self, members: Sequence[Member]) -> None:
        """Refuse members whose labels, weights or states are not those the attributor was fitted at.

        Raises:
            LoadError: naming each member and tensor that differs, and the fix.
        """
        if len(members) != len(self.members):
            raise LoadError(
                f"{self.path} was fitted with {len(self.members)} member(s) "
                f"({', '.join(m['label'] for m in self.members)}) but the task gives {len(members)} "
                f"({', '.join(m.label for m in members)}); load it with the task (and checkpoints) it was fitted with, "
                f"or {_REFIT}"
            )
        problems = []
        for saved, member in zip(self.members, members):
            now = _member_record(member)
            changed = sorted(n for n in set(now["tensors"]) | set(saved["tensors"])
                             if now["tensors"].get(n) != saved["tensors"].get(n))
            if changed:
                shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
                problems.append(f"{member.label}: {shown}")
            if (now["label"], now["weight"]) != (saved["label"], saved["weight"]):
                problems.append(f"{member.label!r} (weight {now['weight']}) where {saved['label']!r} (weight "
                                f"{saved['weight']}) was fitted")
        if problems:
            raise LoadError(
                f"the task's model is not the one {self.path} was fitted at: the weights differ in "
                f"{'; '.join(problems)}. Load it with the model (or checkpoints) it was fitted at, or {_REFIT}"
            )

    def check_functions(self, task: AttributionTask) -> None:
        """Warn when the task's loss or target function is not the one fitted with (its identity differs)."""
        now = _functions(task)
        differ = [name for name in ("loss_fn", "target") if now[name] != self.functions.get(name)]
        if differ:
            warnings.warn(
                f"the task's {' and '.join(differ)} differ from those {self.path} was fitted with (another code, "
                "constant or module name): the saved training features describe the old ones; if the functions "
                f"changed, {_REFIT}", AttrkitWarning, stacklevel=3,
            )


def _damaged(path: Path, what: str) -> LoadError:
    return LoadError(f"{path} is not a readable saved attributor: {what}; save it again from the fitted attributor, "
                     f"or {_REFIT}")


def read(path: str | os.PathLike) -> Saved:
    """The saved attributor at ``path``, its manifest and ``state.pt`` checked.

    Raises:
        LoadError: no manifest, another format or version, an altered manifest or ``state.pt``, or a
            ``state.pt`` that holds anything but plain data.
    """
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise LoadError(f"{path} is not a saved attributor (no {MANIFEST}); write one with attributor.save(path)")
    try:
        body = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"{manifest} is unreadable ({exc})") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise _damaged(path, f"{manifest} is not an attrkit manifest")
    if body.pop("sha256", None) != _json_sha256(body):
        raise _damaged(path, f"{manifest} was altered after it was written (its checksum does not match)")
    if body.get("version") != VERSION:
        raise LoadError(f"{path} has format version {body.get('version')} (attrkit {body.get('attrkit')}); this "
                        f"attrkit reads version {VERSION}: load it with that attrkit version, or {_REFIT}")
    state = path / body["state"]["file"]
    if not state.is_file() or _sha256(state) != body["state"]["sha256"]:
        raise _damaged(path, f"{state} is missing or was altered (its checksum does not match the manifest)")
    try:
        with open(state, "rb") as f:
            tensors = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise _damaged(path, f"{state} holds something other than tensors, numbers and strings ({exc})") from exc
    if not isinstance(tensors, dict):
        raise _damaged(path, f"{state} does not hold a dict of tensors")
    return Saved(path=path, spec=body["spec"], members=body["members"], functions=body["functions"],
                 fitted=body["fitted"], tensors=tensors)


def load(path: str | os.PathLike, task: AttributionTask, registry: Registry | None = None) -> Attributor:
    """A fitted attributor saved by ``attributor.save(path)``, for ``task``, without refitting.

    The saved spec is composed again (with ``registry``: the parts' plugins must be installed)
    and the fitted state restored: ``attribute``, ``top_k`` and (given the training loader)
    ``self_influence`` give the saved attributor's results bit for bit, on the same machine.

    Args:
        path: the folder ``save`` wrote.
        task: the task to attribute: the same model (or checkpoints) at the same weights, and the
            same loss and target functions, as at ``fit``.
        registry: defaults to every installed plugin.

    Returns:
        The fitted attributor.

    Raises:
        LoadError: the task's weights differ from those fitted at (naming the tensors), or the
            files are damaged, altered or of another format version.
        SpecError: the saved spec's components are not registered here.

    Example:
        >>> attributor.save("trak.attrkit")                              # doctest: +SKIP
        >>> scores = attrkit.load("trak.attrkit", task).attribute(test)  # doctest: +SKIP
    """
    if not isinstance(task, AttributionTask):
        raise ArgumentTypeError(f"task must be an attrkit.AttributionTask, got {type(task).__name__}")
    saved = read(path)
    attributor = compose(saved.spec, task, registry)
    saved.check_functions(attributor.task)
    attributor.restore(saved)
    return attributor
