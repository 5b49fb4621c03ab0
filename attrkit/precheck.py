"""Refusals decided from the spec and the task, before any work.

:func:`attrkit.compose` calls every part's ``check(config, task, parts)`` hook
(:meth:`attrkit.protocols.Component.check`: the explicit solver's ``max_dim`` against the
selected parameters, an ensemble without members, ``last-layer`` on a model without an
``nn.Linear``, TracIn's learning rates against the members) and raises one
:class:`~attrkit.errors.SpecError` with every problem. The helpers below answer the
questions such checks ask, the way the engine will.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from attrkit.errors import AttrkitError
from attrkit.parameter_gradients import restrict_gradients
from attrkit.parts import Part
from attrkit.plugins import describe_exception

if TYPE_CHECKING:
    from attrkit.compose import Resolved
    from attrkit.task import AttributionTask

__all__ = ["check_parts", "gradient_dimension", "member_count"]


def gradient_dimension(task: AttributionTask, parts: Mapping[str, Part]) -> int | None:
    """``p``, the length of one gradient vector the spec's gradient source gives for ``task``
    (restricted to the ensemble's ``gradient_params`` as the engine does), or ``None`` when
    the spec has no gradient source or it cannot say (its own check reports why)."""
    source = parts.get("gradients")
    if source is None:
        return None
    ensemble = parts.get("ensemble")
    try:
        made = source.make()
        if ensemble is not None and ensemble.cls.gradient_params is not None:
            made = restrict_gradients(made, ensemble.cls.gradient_params, ensemble.name)
        return int(made.dimension(task))
    except AttrkitError:
        return None


def member_count(task: AttributionTask, parts: Mapping[str, Part]) -> int | None:
    """How many members the score formula sums over: the ensemble's
    :meth:`~attrkit.protocols.Ensemble.member_count` (``None`` when it cannot say without
    building them), or without an ensemble one per task checkpoint (1 for the current weights)."""
    ensemble = parts.get("ensemble")
    if ensemble is None:
        return len(task.checkpoints) if task.checkpoints is not None else 1
    return ensemble.cls.member_count(ensemble.config, task)


def check_parts(resolved: Resolved, task: AttributionTask) -> list[str]:
    """Every problem the parts' ``check`` hooks find, the method's first, each line starting
    with its part (``solver.max_dim: …``; a line that does not gets ``solver: ``).

    A hook that raises an attrkit error gives that error's problems; one that raises anything
    else is reported as a bug of its plugin.
    """
    parts = resolved.parts()
    problems: list[str] = []
    for part, entry in resolved.entries.items():
        try:
            lines = list(entry.cls.check(resolved.configs[part], task, parts))
        except AttrkitError as exc:
            lines = list(getattr(exc, "problems", [str(exc)]))
        except Exception as exc:  # a faulty hook must say whose it is
            lines = [f"{entry.kind} {entry.name!r}'s check raised {describe_exception(exc)}; report it to "
                     f"{entry.plugin}"]
        problems += [line if line.startswith(part) else f"{part}: {line}" for line in lines]
    return problems
