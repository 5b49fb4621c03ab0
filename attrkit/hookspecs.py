"""The hooks an attrkit plugin may implement.

A plugin is a module (or object) named in the entry-point group ``attrkit``::

    [project.entry-points.attrkit]
    my-projectors = "my_package.projectors"

whose hook implementations are marked with :data:`hookimpl`. Hooks are called by
keyword and grow only by adding arguments; an implementation may accept fewer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

__all__ = ["PROJECT", "hookimpl", "hookspec"]

#: pluggy project name, also the entry-point group.
PROJECT = "attrkit"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def attrkit_components() -> Sequence[type]:
    """Return the component classes this plugin provides.

    Each class declares ``name``, ``kind``, ``Config``, ``requires`` and ``provides``
    (see :mod:`attrkit.protocols`). The host owns the registry: two plugins giving
    the same (kind, name) is an error at start-up that names both.
    """


@hookspec
def attrkit_presets() -> Mapping[str, Mapping[str, Any]]:
    """Return named specs, ``{preset name: spec dict}``, usable wherever a spec is."""
