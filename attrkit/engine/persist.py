"""``GradientAttributor.save`` / ``restore``: a :class:`~attrkit.engine.state.Fit` as a saved folder, and back.

    save(method, fit, path)
        the weights are still those fitted at (fit.guard); every part's state_dict (a part
        that cannot be saved refuses here, before anything is written); then, through
        attrkit.saving.save_attributor: the members' labels, weights and weight digests;
        state.pt: groups, example weights, skipped, and per member i
        "member.{i}.projector.<key>" and "member.{i}.solver.<key>"; features/: each member's
        training side Φ_m as it is scored (Q, cosine, column scale and skipped rows applied)
    restore(method, saved) -> Fit
        the members the spec makes for the task, checked against the saved ones; fresh parts
        (parts[slot].make(i)) given their state; the training sides read back (verified); a
        new FitGuard for the task's model

The training sides are written to ``features/``, a :class:`~attrkit.disk_store.DiskStore`
(one ``.npy`` per chunk with its SHA-256, verified when read). A resident side becomes one
chunk, read back into memory at load. A side streamed from an out-of-core fit store — the
fit's ``store``, or the temporary store a fit without one streams from — is *copied*, tile
by tile within the memory budget, and streamed from the copy under the same budget and with
the same tiles (so every floating-point sum is as before; the temporary store may go). A copy, not a
reference to the fit store: the row transforms of a streamed side (TRAK's ``Q``, cosine
normalisation, RelatIF's column scale, zeroed skipped rows) are applied per tile and live
only in the fitted process, and a saved folder should not break when the fit store is
deleted or refitted. It costs the disk space of the features once more.

Not saved: the training loader (``self_influence`` is given it again) and the fit guard
(made anew at load, so attributing checks the loaded model's weights do not change).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attrkit.disk_store import DiskStore
from attrkit.engine.low_rank import low_rank
from attrkit.engine.state import Fit, FittedMember
from attrkit.functional.structured_products import ProductLayout
from attrkit.errors import LoadError, SaveError, StoreMismatchError
from attrkit.feature_matrix import FeatureMatrix
from attrkit.fit_guard import FitGuard
from attrkit.saving import Saved, save_attributor

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor

__all__ = ["restore", "save"]

FEATURES = "features"
#: Feature dtypes a chunk file (``.npy``) can hold.
_DTYPES = (torch.float16, torch.float32, torch.float64)


def _write_side(store: DiskStore, index: int, side: FeatureMatrix) -> dict[str, Any]:
    """Write member ``index``'s training side as chunks of ``store``, one tile each; its layout record."""
    if side.partitioned:
        raise SaveError("save() needs every training row in this process; in a torch.distributed run the features are "
                        "split over the ranks: fit and save in a single process")
    if side.dtype not in _DTYPES:
        raise SaveError(f"training features of dtype {side.dtype} cannot be saved (float16, float32 or float64 only)")
    chunks = []
    for j, tile in enumerate(side.tiles()):
        store.put(index, j, tile.values)
        chunks.append([j, tile.start, int(tile.values.shape[0])])
        del tile
    return {"n": side.n, "width": side.width, "dtype": str(side.dtype).removeprefix("torch."),
            "resident": side.resident, "budget": side.budget, "tile_bytes": side.tile_bytes, "chunks": chunks,
            "transformed": side.row_bytes > side.width * side.dtype.itemsize}


def save(method: GradientAttributor, fit: Fit, path: str | os.PathLike) -> None:
    """Write ``fit`` to the folder ``path``; see :meth:`GradientAttributor.save`."""
    fit.guard.check(method.task)
    tensors: dict[str, Any] = {"groups": fit.groups, "weights": fit.weights, "skipped": fit.skipped}
    for i, f in enumerate(fit.members):
        for slot, part in (("projector", f.projector), ("solver", f.solver)):
            if part is not None:
                tensors.update({f"member.{i}.{slot}.{key}": value for key, value in part.state_dict().items()})
    key = uuid.uuid4().hex

    def features(folder: Path) -> dict[str, Any]:
        store = DiskStore(folder / FEATURES, key)
        return {"features_key": key,
                "features": [{**_write_side(store, i, f.train), "layout": _record(f.layout),
                              "from_factors": _record(f.from_factors)} for i, f in enumerate(fit.members)]}

    save_attributor(path, method, [f.member for f in fit.members], tensors, {"policy": fit.policy}, features)


def _record(layout: ProductLayout | None) -> dict | None:
    """A layout's JSON record, or ``None``."""
    return None if layout is None else layout.to_dict()


def _layout(record: dict | None) -> ProductLayout | None:
    """The layout :func:`_record` wrote (``None`` for none, or a record written before it was kept)."""
    return None if record is None else ProductLayout.from_dict(record)


def _unchanged(tile: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A no-op row transform: a copied streamed side keeps the tile rows of its transformed original."""
    return tile


def _read_side(
    saved: Saved, store: DiskStore, index: int, record: dict[str, Any], device: torch.device
) -> FeatureMatrix:
    """Member ``index``'s training side, its chunks verified now (streamed ones again when their files change)."""
    chunks = [tuple(c) for c in record["chunks"]]
    try:
        for j, _, size in chunks:
            if not store.has(index, j, rows=size):
                raise LoadError(f"{saved.path}: the training features of member {index} (chunk {j}) are missing; save "
                                "the attributor again, or fit it again")
    except StoreMismatchError as exc:
        raise LoadError(f"{saved.path} is damaged: its training features do not match their checksums ({exc})") from exc
    matrix = FeatureMatrix.stored(store, index, chunks, n=record["n"], width=record["width"],
                                  dtype=getattr(torch, record["dtype"]), device=device, resident=record["resident"],
                                  budget=record["budget"], tile_bytes=record.get("tile_bytes"))
    return matrix.mapped(_unchanged) if record["transformed"] and not record["resident"] else matrix


def restore(method: GradientAttributor, saved: Saved) -> Fit:
    """The :class:`Fit` that ``saved`` holds, for ``method``'s task; see :meth:`GradientAttributor.restore`.

    Raises:
        LoadError: other members or weights than fitted at, or damaged training features.
    """
    members = method.members()
    saved.check_members(members)
    device = method.task.device
    root = saved.path / FEATURES
    if not (root / "store.json").is_file():
        raise LoadError(f"{saved.path} has no {FEATURES}/ folder (the training features); save the attributor again")
    try:
        store = DiskStore(root, saved.fitted["features_key"])
    except StoreMismatchError as exc:
        raise LoadError(f"{saved.path}: its {FEATURES}/ folder belongs to another save ({exc})") from exc
    fitted = []
    for i, member in enumerate(members):
        parts = dict.fromkeys(("projector", "solver"))
        for slot in parts:
            if slot in method.parts:
                parts[slot] = method.parts[slot].make(i)
                parts[slot].load_state_dict(saved.part(f"member.{i}.{slot}.", device))
        record = saved.fitted["features"][i]
        train = _read_side(saved, store, i, record, device)
        fitted.append(FittedMember(member=member, projector=parts["projector"], solver=parts["solver"], train=train,
                                   layout=_layout(record.get("layout")), from_factors=_layout(record.get("from_factors")),
                                   low_rank=low_rank(method, parts["projector"], parts["solver"])))
    weights = saved.tensors["weights"]
    return Fit(members=fitted, groups=saved.tensors["groups"], weights=None if weights is None else weights.to(device),
               skipped=saved.tensors["skipped"], policy=saved.fitted["policy"], guard=FitGuard(method.task, members),
               train=None)
