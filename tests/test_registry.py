"""Plugin loading, provenance, conflicts, blocking and the unknown-name menu."""

from importlib import metadata
from types import SimpleNamespace

import attrs
import pytest

import attrkit
from attrkit.plugins import load_plugins
from attrkit.protocols import BASES
from attrkit.registry import Registry


def _entry_point(name, value):
    return metadata.EntryPoint(name=name, value=value, group="attrkit")


@attrs.frozen
class _Config:
    pass


def _component(kind, name):
    base = BASES.get(kind, object)
    methods = {m: lambda self, *args, **kwargs: None for m in getattr(base, "__abstractmethods__", ())}
    return type(f"C_{name}", (base,), {**methods, "name": name, "kind": kind, "Config": _Config})


def _plugin(*classes):
    return SimpleNamespace(attrkit_components=attrkit.hookimpl(lambda: list(classes)))


def test_every_first_party_plugin_loads_through_the_entry_point_group(registry):
    plugins = {e.plugin.name for named in registry.components().values() for e in named.values()}
    group = {ep.name for ep in metadata.entry_points(group="attrkit")}
    assert plugins <= group
    assert {"attrkit-methods", "attrkit-projectors", "attrkit-metrics"} <= plugins
    assert registry.get("method", "grad-dot").plugin.distribution == "attrkit"


def test_components_lists_every_kind(registry):
    comps = attrkit.components()
    assert set(comps) == {"method", "gradients", "projector", "solver", "grouper", "ensemble", "metric"}
    assert {"grad-dot", "grad-cos"} <= set(comps["method"])
    assert comps["projector"]["gaussian"].plugin.version == metadata.version("attrkit")


def test_unknown_name_is_a_menu(registry):
    with pytest.raises(attrkit.UnknownComponentError) as info:
        registry.get("projector", "gausian")
    message = str(info.value)
    assert "Did you mean: 'gaussian'" in message
    assert "identity (attrkit-projectors)" in message
    assert "attrkit-methods" in message
    assert isinstance(info.value, LookupError)


def test_a_broken_plugin_is_reported_and_the_others_still_load():
    eps = [_entry_point("broken", "attrkit_no_such_module_xyz"), _entry_point("good", "attrkit_plugins.methods")]
    eps.append(_entry_point("gradients", "attrkit_plugins.gradients"))
    registry = Registry(*load_plugins(entry_points=eps))
    assert "ModuleNotFoundError" in registry.failed["broken"]
    assert registry.names("method") == ["grad-cos", "grad-dot", "tracin"]
    with pytest.raises(LookupError, match="Plugin 'broken' failed to load: ModuleNotFoundError"):
        registry.get("method", "trak")


def test_conflicts_are_refused_at_lookup_naming_both_plugins():
    one = _plugin(_component("projector", "dup"), _component("projector", "only-one"))
    two = _plugin(_component("projector", "dup"))
    registry = Registry(*load_plugins(entry_points=[], extra=[("one", one), ("two", two)]))
    assert registry.names("projector") == ["only-one"]  # neither wins "dup"; one's other name works
    assert [p.name for p in registry.conflicts[("projector", "dup")]] == ["one", "two"]
    with pytest.raises(attrkit.PluginConflictError, match="'one'.*'two'.*ATTRKIT_BLOCK_PLUGINS=one"):
        registry.get("projector", "dup")


def test_blocking_a_first_party_plugin_by_name(monkeypatch):
    monkeypatch.setenv("ATTRKIT_BLOCK_PLUGINS", "attrkit-methods")
    registry = Registry(*load_plugins())
    assert "grad-dot" not in registry.names("method")
    assert "gaussian" in registry.names("projector")


@pytest.mark.parametrize(
    "bad, name, error, match",
    [
        (_component("projector", "Bad_Name"), "Bad_Name", attrkit.BrokenPluginError, "lowercase"),
        (_component("widget", "fine"), "fine", attrkit.UnknownComponentError, "kind must be one of"),
        (
            type("NoConfig", (BASES["projector"],), {"name": "x", "project": lambda self, v: v}),
            "x",
            attrkit.BrokenPluginError,
            "Config",
        ),
        (
            type("NotASubclass", (), {"name": "y", "kind": "projector", "Config": _Config}),
            "y",
            attrkit.BrokenPluginError,
            "must subclass attrkit.plugin.Projector",
        ),
        (
            type("NoSpace", (BASES["solver"],), {"name": "z", "Config": _Config, "fit": lambda self, c: None,
                                                 "solve": lambda self, v: v}),
            "z",
            attrkit.BrokenPluginError,
            "must declare space",
        ),
        (
            type("NoProject", (BASES["projector"],), {"name": "w", "Config": _Config}),
            "w",
            attrkit.BrokenPluginError,
            "it does not implement project",
        ),
    ],
)
def test_invalid_component_classes_are_refused(bad, name, error, match):
    registry = Registry(*load_plugins(entry_points=[], extra=[("bad", _plugin(bad, _component("projector", "ok")))]))
    assert match in registry.broken["bad"]
    assert registry.names("projector") == []  # nothing of a broken plugin is registered
    with pytest.raises(error, match=f"'bad'.*{match}"):
        registry.get("solver" if name == "z" else "projector", name)


def test_presets_are_registered_and_composable(toy):
    plugin = SimpleNamespace(attrkit_presets=attrkit.hookimpl(lambda: {"cheap": {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8}}}))
    registry = Registry(*load_plugins(extra=[("presets", plugin)]))
    attributor = attrkit.compose("cheap", toy.task, registry)
    assert attributor.resolved.spec.projector.params["dim"] == 8
