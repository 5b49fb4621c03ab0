"""Noticing weights that change under an attributor: a digest per tensor, compared later.

A fitted attributor describes the weights it was fitted at. If the model is trained
further (``optimizer.step()``, ``p.data.add_(...)``, ``load_state_dict``), or if the user's
``loss_fn`` changes weights or buffers in place while ``fit`` runs (``model.train()``
with batch-norm updates its running statistics), scores would match neither the old
nor the new weights. :class:`WeightsGuard` records a digest of each tensor and names
the ones that differ. Digests read the bytes (about 1.5 GB/s), so changes made through
``.data`` — which no version counter sees — are caught too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from attrkit.errors import ModelChangedError
from attrkit.fingerprint import update_tensor

__all__ = ["WeightsGuard"]


def _digest(tensor: torch.Tensor) -> str:
    digest = hashlib.sha256()
    update_tensor(digest, tensor)
    return digest.hexdigest()


class WeightsGuard:
    """Digests of named tensors, taken now, to compare with their values later.

    Args:
        tensors: ``{name: Tensor}``; names appear in messages (``"fc.weight"``,
            ``"checkpoint 1: fc.weight"``).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = dict(tensors)
        self._digests = {name: _digest(t) for name, t in self._tensors.items()}

    def changed(self, current: Mapping[str, torch.Tensor] | None = None) -> list[str]:
        """Names whose values differ from the recorded ones (or that appeared or disappeared).

        Args:
            current: the tensors to compare; default the same tensor objects as recorded
                (in-place changes).
        """
        current = self._tensors if current is None else dict(current)
        names = sorted(set(current) | set(self._digests))
        return [n for n in names if n not in current or n not in self._digests or _digest(current[n]) != self._digests[n]]

    def check(self, current: Mapping[str, torch.Tensor] | None, when: str, fix: str) -> None:
        """Raise when anything changed.

        Args:
            current: as :meth:`changed`.
            when: what the change happened during or since (``"since fit"``).
            fix: what to do.

        Raises:
            ModelChangedError: naming up to ten changed tensors.
        """
        changed = self.changed(current)
        if changed:
            shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
            raise ModelChangedError(f"the model's weights changed {when} ({shown}); {fix}")
