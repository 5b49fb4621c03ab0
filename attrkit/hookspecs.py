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
    """Return the component classes this plugin provides, as a list.

    Each class declares ``name``, ``kind``, ``Config``, ``requires`` and ``provides``
    (see :mod:`attrkit.protocols`). The host owns the registry and checks every class:
    if this hook raises, returns something other than a list, or returns anything
    that is not a valid component class, the plugin is *broken*: none of its
    components or presets is registered, and ``attrkit plugins`` and lookups of its
    names say why. A (kind, name) that two plugins give is registered for neither;
    looking it up raises :class:`~attrkit.errors.PluginConflictError` naming both.
    """


@hookspec
def attrkit_presets() -> Mapping[str, Mapping[str, Any]]:
    """Return named specs, ``{preset name: spec dict}``, usable wherever a spec is.

    Preset names are lowercase words joined by hyphens. The same rules as for
    :func:`attrkit_components` apply: a hook that raises or returns something else
    breaks the plugin, and a preset name two plugins give is registered for neither.
    """
