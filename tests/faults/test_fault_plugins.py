"""One bad plugin never takes the others down, and every refusal says why and how to fix it."""

from types import SimpleNamespace

import attrs
import pytest

import attrkit
from attrkit.cli import main
from attrkit.plugins import load_plugins
from attrkit.protocols import BASES
from attrkit.registry import Registry


@attrs.frozen
class _Config:
    pass


def _component(kind, name, **attributes):
    """A component class of ``kind`` whose methods do nothing (the registry never calls them)."""
    base = BASES.get(kind, object)
    methods = {m: lambda self, *args, **kwargs: None for m in getattr(base, "__abstractmethods__", ())}
    body = {"name": name, "kind": kind, "Config": _Config, "requires": frozenset(), "provides": frozenset()}
    return type(f"C_{name}", (base,), {**methods, **body, **attributes})


def _plugin(*classes):
    return SimpleNamespace(attrkit_components=attrkit.hookimpl(lambda: list(classes)))


def _returning(value):
    return SimpleNamespace(attrkit_components=attrkit.hookimpl(lambda: value))


def _raising():
    raise ValueError("boom")


def _registry(**plugins):
    return Registry(*load_plugins(entry_points=[], extra=list(plugins.items())))


GOOD = _plugin(_component("projector", "fine"))


@pytest.fixture(autouse=True)
def _default_registry_restored():
    yield
    attrkit.reset_registry()


def test_hook_that_raises_is_reported_and_the_others_work():
    registry = _registry(bad=SimpleNamespace(attrkit_components=attrkit.hookimpl(_raising)), good=GOOD)
    assert registry.get("projector", "fine").plugin.name == "good"
    assert registry.failed["bad"].startswith("attrkit_components() raised ValueError: boom (at ")
    assert "test_fault_plugins.py:" in registry.failed["bad"]
    with pytest.raises(attrkit.UnknownComponentError) as info:  # its names are unknown: the menu names it
        registry.get("projector", "what-bad-gave")
    assert "Plugin 'bad' failed to load: attrkit_components() raised ValueError: boom" in str(info.value)
    assert "ATTRKIT_BLOCK_PLUGINS=bad" in str(info.value)


def test_hook_that_returns_a_non_list():
    registry = _registry(bad=_returning(_component("projector", "solo")), good=GOOD)
    assert registry.names("projector") == ["fine"]
    assert "attrkit_components() must return a list of component classes, got ABCMeta" in registry.broken["bad"]


def test_hook_that_returns_a_non_class():
    registry = _registry(bad=_plugin(_component("projector", "mine"), "gaussian"), good=GOOD)
    assert registry.names("projector") == ["fine"]  # not half-registered: 'mine' is refused too
    with pytest.raises(attrkit.BrokenPluginError) as info:
        registry.get("projector", "mine")
    message = str(info.value)
    assert "projector 'mine' comes from plugin 'bad' ((registered directly) -), which is broken" in message
    assert "attrkit_components()[1] 'gaussian': not a class" in message
    assert "ATTRKIT_BLOCK_PLUGINS=bad" in message
    assert isinstance(info.value, LookupError)


def test_hook_that_returns_an_invalid_class():
    no_config = _component("projector", "half", Config=dict)
    registry = _registry(bad=_plugin(_component("projector", "mine"), no_config), good=GOOD)
    for name in ("half", "mine"):
        with pytest.raises(attrkit.BrokenPluginError, match=r"'bad'.*C_half'>: Config must be a frozen attrs class"):
            registry.get("projector", name)
    assert registry.get("projector", "fine").plugin.name == "good"


def test_a_broken_plugin_does_not_take_a_name_a_usable_plugin_gives():
    registry = _registry(bad=_plugin(_component("projector", "fine"), 42), good=GOOD)
    assert registry.get("projector", "fine").plugin.name == "good"


def test_conflicting_names_are_registered_for_neither_and_name_both():
    one = _plugin(_component("projector", "dup"), _component("projector", "only-one"))
    two = _plugin(_component("projector", "dup"), _component("solver", "only-two", space="feature"))
    registry = _registry(one=one, two=two)
    assert registry.get("projector", "only-one").plugin.name == "one"
    assert registry.get("solver", "only-two").plugin.name == "two"
    with pytest.raises(attrkit.PluginConflictError) as info:
        registry.get("projector", "dup")
    assert str(info.value) == (
        "projector 'dup' is provided by 2 plugins: 'one' ((registered directly) -) and 'two' ((registered directly) -). "
        "attrkit does not choose between them, so projector 'dup' is not registered (everything else they "
        "give still works). Fix: uninstall one of them, or block one with ATTRKIT_BLOCK_PLUGINS=one or ATTRKIT_BLOCK_PLUGINS=two."
    )


def test_a_conflict_is_one_spec_problem_among_the_others():
    one, two = _plugin(_component("projector", "dup")), _plugin(_component("projector", "dup"))
    registry = Registry(*load_plugins(extra=[("one", one), ("two", two)]))
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.resolve({"method": "grad-dot", "projector": "dup", "grouper": "nope"}, registry)
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["projector", "grouper"]
    assert problems[0].startswith("projector: projector 'dup' is provided by 2 plugins: 'one'")


def test_preset_hook_that_raises_breaks_only_its_plugin():
    bad = SimpleNamespace(
        attrkit_components=attrkit.hookimpl(lambda: [_component("projector", "mine")]),
        attrkit_presets=attrkit.hookimpl(_raising),
    )
    good = SimpleNamespace(attrkit_presets=attrkit.hookimpl(lambda: {"cheap": {"method": "grad-dot"}}))
    registry = _registry(bad=bad, good=good)
    assert "cheap" in dict(registry.presets)
    assert registry.broken["bad"].startswith("attrkit_presets() raised ValueError: boom")
    with pytest.raises(attrkit.BrokenPluginError, match="attrkit_presets\\(\\) raised ValueError: boom"):
        registry.get("projector", "mine")


def test_preset_hook_that_returns_a_non_dict():
    bad = SimpleNamespace(attrkit_presets=attrkit.hookimpl(lambda: ["cheap"]))
    registry = _registry(bad=bad)
    assert "attrkit_presets() must return a dict {preset name: spec dict}, got list ['cheap']" in registry.broken["bad"]


def test_conflicting_presets_are_refused_and_other_presets_work():
    one = SimpleNamespace(attrkit_presets=attrkit.hookimpl(lambda: {"cheap": {"method": "grad-dot"}, "a": {"method": "grad-dot"}}))
    two = SimpleNamespace(attrkit_presets=attrkit.hookimpl(lambda: {"cheap": {"method": "grad-cos"}}))
    registry = Registry(*load_plugins(extra=[("one", one), ("two", two)]))
    assert attrkit.resolve("a", registry).spec.method.name == "grad-dot"
    with pytest.raises(attrkit.PluginConflictError, match="preset 'cheap' is provided by 2 plugins: 'one'.*'two'"):
        registry.presets["cheap"]
    with pytest.raises(attrkit.SpecError, match="spec: preset 'cheap' is provided by 2 plugins.*ATTRKIT_BLOCK_PLUGINS=one"):
        attrkit.resolve("cheap", registry)
    assert registry.conflicts[("preset", "cheap")][1].name == "two"


def test_unknown_block_name_warns_with_close_matches():
    with pytest.warns(attrkit.PluginWarning) as record:
        load_plugins(entry_points=[], block=["goood"], extra=[("good", GOOD), ("other", GOOD)])
    assert str(record[0].message) == (
        "the block= argument names plugin 'goood', but no installed attrkit plugin has that name, so it blocks "
        "nothing. Did you mean 'good'? Installed plugins: good, other. Fix: spell it as `attrkit plugins` does, "
        "or remove it."
    )


def test_unknown_name_in_the_environment_variable_warns(monkeypatch):
    monkeypatch.setenv("ATTRKIT_BLOCK_PLUGINS", "attrkit-method")
    with pytest.warns(attrkit.PluginWarning, match="^ATTRKIT_BLOCK_PLUGINS names plugin 'attrkit-method'.*'attrkit-methods'"):
        load_plugins()


def test_lookup_while_plugins_are_blocked_names_them(monkeypatch):
    monkeypatch.setenv("ATTRKIT_BLOCK_PLUGINS", "good")
    registry = Registry(*load_plugins(entry_points=[], block=["other"], extra=[("good", GOOD), ("other", GOOD)]))
    assert registry.blocked == {"good": "ATTRKIT_BLOCK_PLUGINS", "other": "the block= argument"}
    with pytest.raises(attrkit.UnknownComponentError) as info:
        registry.get("projector", "fine")
    assert str(info.value).endswith(
        "Blocked plugins, not loaded, so this projector may come from one of them: "
        "'good' ((registered directly) -) by ATTRKIT_BLOCK_PLUGINS, 'other' ((registered directly) -) by the "
        "block= argument. Fix: remove the plugin from ATTRKIT_BLOCK_PLUGINS (or from block=) to load it."
    )


def test_a_faulty_availability_check_marks_the_component_unavailable():
    registry = _registry(good=_plugin(_component("projector", "gpu", availability=classmethod(lambda cls: 1 / 0))))
    why = registry.get("projector", "gpu").unavailable
    assert why.startswith("its availability() check raised ZeroDivisionError: division by zero (at ")
    assert why.endswith("report it to 'good' ((registered directly) -)")


def test_attrkit_plugins_runs_and_lists_every_fault(capsys):
    attrkit.reset_registry(
        block=["attrkit-trak"],
        extra=[
            ("bad", SimpleNamespace(attrkit_components=attrkit.hookimpl(_raising))),
            ("one", _plugin(_component("projector", "dup"))),
            ("two", _plugin(_component("projector", "dup"))),
            ("shaky", _plugin(_component("projector", "shaky", availability=classmethod(lambda cls: 1 / 0)))),
        ],
    )
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "grad-dot" in out
    assert "  projector 'dup': 'one' ((registered directly) -) and 'two' ((registered directly) -)" in out
    assert "plugin 'bad' ((registered directly) -) is broken, none of its components or presets are registered: " in out
    assert "attrkit_components() raised ValueError: boom" in out
    assert "plugin 'attrkit-trak' (attrkit " in out and "is blocked by the block= argument, so it is not loaded" in out
    assert "[unavailable: its availability() check raised ZeroDivisionError" in out
