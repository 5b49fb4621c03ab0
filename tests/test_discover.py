"""Discoverable parameters: ``attrkit plugins NAME``, the descriptions behind it, ``attrkit docs``."""

import json
import socket

import attrs
import pytest

import attrkit
from attrkit import fields
from attrkit.cli import main
from attrkit.describe import description, lookup
from attrkit.docs import markdown, write_docs
from attrkit.parameters import allowed_values, field_meanings
from attrkit.protocols import BASES


def _entries():
    registry = attrkit.default_registry()
    return [(kind, name) for kind, named in registry.components().items() for name in named]


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plugins_cg_prints_parameters_capabilities_flags_and_an_example(capsys):
    code, out, _ = _run(capsys, "plugins", "cg")
    assert code == 0
    assert out.startswith("solver 'cg' — plugin attrkit-ihvp-solvers (attrkit ")
    assert "Block conjugate gradients on the dataset curvature" in out
    assert ("  max_iter: int = 10  (>= 1)\n      CG iterations per solve, each one curvature product (with HVPs, one "
            "pass over the training data).") in out
    assert '  curvature: str = "gauss-newton"  (one of "hessian", "gauss-newton")' in out
    assert "  tol: float = 1e-06  (> 0.0)\n      relative residual at which a vector stops." in out
    assert "  regularization: float = 0.001  (>= 0.0)\n      damping `λ >= 0`." in out
    assert "requires: hvp (from gradients 'group', gradients 'per-example')" in out
    assert "provides: nothing" in out
    assert 'flags: space = "parameter", streams_features = false, local_solve = false, linear = false' in out
    assert 'example: attrkit.compose({"method": "if", "solver": {"name": "cg", "regularization": 0.001}}, task)' in out


def test_plugins_gaussian(capsys):
    code, out, _ = _run(capsys, "plugins", "gaussian")
    assert code == 0
    assert out.startswith("projector 'gaussian' — plugin attrkit-projectors")
    assert "  dim: int = 512  (>= 1)\n      output dimension `k`." in out
    assert '  dtype: str = "float32"  (one of "float32", "float16", "bfloat16")' in out
    assert "  seed: int = 0\n      fixes the matrix" in out
    assert "requires: nothing" in out and "flags: identity = false" in out
    example = '{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 512}}'
    assert f"example: attrkit.compose({example}, task)" in out


def test_a_name_of_several_kinds_shows_each(capsys):
    code, out, _ = _run(capsys, "plugins", "arnoldi")
    assert code == 0
    assert out.startswith("'arnoldi' is a projector and a solver; all are shown below "
                          "(`attrkit plugins projector/arnoldi` or `attrkit plugins solver/arnoldi` shows one).")
    assert "\nprojector 'arnoldi' — plugin attrkit-arnoldi" in out
    assert "\nsolver 'arnoldi' — plugin attrkit-ihvp-solvers" in out
    assert out.index("projector 'arnoldi'") < out.index("solver 'arnoldi'")


def test_kind_slash_name_shows_one(capsys):
    code, out, _ = _run(capsys, "plugins", "solver/arnoldi")
    assert code == 0
    assert out.startswith("solver 'arnoldi' — plugin attrkit-ihvp-solvers")
    assert "projector 'arnoldi'" not in out
    assert "  rank: int = 50  (>= 1)\n      eigenpairs kept." in out


@pytest.mark.parametrize(("query", "message"), [
    ("arnoldy", "no component is registered as 'arnoldy'. Did you mean: arnoldi?"),
    ("projektor/gaussian", "unknown kind 'projektor'"),
    ("solver/gaussian", "unknown solver 'gaussian'"),
])
def test_an_unknown_name_is_a_menu(capsys, query, message):
    code, out, err = _run(capsys, "plugins", query)
    assert code == 1 and not out
    assert err.startswith("attrkit plugins: ") and message in err


def test_a_method_shows_its_slots_and_the_flat_form(capsys):
    code, out, _ = _run(capsys, "plugins", "rps")
    assert code == 0
    assert 'flags: slots = ["ensemble"], defaults = {}' in out
    assert 'example: attrkit.compose({"method": "rps", "regularization": 0.003}, task)' in out


def test_a_metric_example_is_for_attrkit_metric(capsys):
    _, out, _ = _run(capsys, "plugins", "lds")
    assert 'example: attrkit.metric({"name": "lds", "correlation": "spearman"})' in out
    assert 'flags: needs = ["subsets", "values"], higher_is_better = true' in out


def test_plugins_json(capsys):
    code, out, _ = _run(capsys, "plugins", "cg", "--json")
    assert code == 0
    (cg,) = json.loads(out)
    assert cg["kind"] == "solver" and cg["plugin"] == "attrkit-ihvp-solvers"
    assert [p["name"] for p in cg["parameters"]] == ["regularization", "curvature", "max_iter", "tol", "matvec",
                                                   "preconditioner"]
    assert cg["parameters"][2] == {"name": "max_iter", "type": "int", "default": 10, "required": False,
                                   "meaning": "CG iterations per solve, each one curvature product (with HVPs, one "
                                              "pass over the training data).",
                                   "allowed": [">= 1"]}
    assert cg["flags"]["space"] == "parameter"


def test_version():
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


# -- every registered component documents every field, and its example composes --------------

@pytest.mark.parametrize(("kind", "name"), _entries())
def test_every_field_of_every_registered_component_has_a_meaning(registry, kind, name):
    config = registry.get(kind, name).cls.Config
    meanings = field_meanings(config)
    missing = [f.alias for f in attrs.fields(config) if not meanings.get(f.alias, meanings.get(f.name))]
    assert not missing, (
        f"{kind} {name!r}: the docstring of {config.__qualname__} (or of a Config base class) documents no meaning "
        f"for {missing}; add them to its 'Attributes:' section, one 'field: meaning' line each"
    )


@pytest.mark.parametrize(("kind", "name"), _entries())
def test_every_example_spec_resolves(registry, kind, name):
    entry = registry.get(kind, name)
    example = description(entry, registry).example
    if entry.unavailable is not None:
        assert example[kind] if kind in example else example["method"] == name
        pytest.skip(f"{kind} {name!r} is unavailable here: {entry.unavailable}")
    if kind == "metric":
        assert attrkit.metric(example, registry).resolved.spec.name == name
    else:
        resolved = attrkit.resolve(example, registry)
        assert resolved.entries[kind].name == name


@pytest.mark.parametrize("kind", list(BASES))
def test_flags_are_the_attributes_the_kind_declares(registry, kind):
    named = registry.components()[kind]
    declared = {"solver": {"space", "streams_features", "local_solve", "linear", "identity"},
                "projector": {"identity", "projects_packed"}, "grouper": {"singletons"}, "ensemble": {"gradient_params"},
                "method": {"slots", "defaults"}, "metric": {"needs", "higher_is_better", "target_axes"}}
    for entry in named.values():
        assert set(description(entry, registry).flags) == declared.get(kind, set())


def test_field_meanings_come_from_the_attributes_section_and_its_bases():
    @attrs.frozen(kw_only=True)
    class Base:
        """Config.

        Attributes:
            dim: output dimension ``k``; wraps
                onto a second line.
            a, b (int): shared meaning.

        Raises:
            c: not an attribute.
        """

        dim: int = 1
        a: int = 0
        b: int = 0

    @attrs.frozen(kw_only=True)
    class Child(Base):
        """Config of a child: the fields of its base, plus

        Attributes:
            c: its own field.
        """

        c: int = 0

    assert field_meanings(Child) == {"dim": "output dimension ``k``; wraps onto a second line.",
                                     "a": "shared meaning.", "b": "shared meaning.", "c": "its own field."}

    @attrs.frozen
    class Undocumented:
        """Config of a new component that forgot its fields."""

        dim: int = 1

    assert field_meanings(Undocumented) == {}


def test_allowed_values_are_read_off_the_validators():
    @attrs.frozen(kw_only=True)
    class C:
        dim: int = fields.positive_int(4)
        tol: float = fields.float_field(1e-3, gt=0.0, le=1.0)
        mode: str = attrs.field(default="a", validator=attrs.validators.in_(("a", "b")))
        size: int | None = fields.int_field(None, ge=2, optional=True)
        flag: bool = attrs.field(default=False, validator=fields.is_bool)

    got = {f.name: allowed_values(f) for f in attrs.fields(C)}
    assert got == {"dim": (">= 1",), "tol": ("> 0.0", "<= 1.0"), "mode": ('one of "a", "b"',),
                   "size": (">= 2", "null"), "flag": ()}


def test_lookup_returns_one_entry_per_kind(registry):
    assert [e.kind for e in lookup("arnoldi", registry)] == ["projector", "solver"]
    assert [e.kind for e in lookup("solver/arnoldi", registry)] == ["solver"]


def test_the_check_hook_defaults_to_no_problems():
    for base in BASES.values():
        assert base.check(None, None, {}) == []


# -- attrkit docs ------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """Any network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("attrkit docs tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_attrkit_docs_writes_the_reference_offline(capsys, tmp_path, offline, registry):
    code, out, _ = _run(capsys, "docs", "--out", str(tmp_path / "api"))
    assert code == 0 and out.startswith(f"wrote 10 pages to {tmp_path / 'api'}")
    pages = {p.name: p.read_text() for p in (tmp_path / "api").iterdir()}
    assert set(pages) == {*(f"{kind}.md" for kind in BASES), "attrkit.md", "attrkit.plugin.md", "index.md"}
    for kind, named in registry.components().items():
        assert all(f"## `{name}`" in pages[f"{kind}.md"] for name in named)
    solver = pages["solver.md"]
    row = ("| `max_iter` | `int` | `10` | >= 1 | CG iterations per solve, each one curvature product (with HVPs, one "
           "pass over the training data). |")
    assert row in solver
    assert "**Flags:** `space = \"parameter\"`" in solver
    assert 'attrkit.compose({"method": "if", "solver": {"name": "cg", "regularization": 0.001}}, task)' in solver
    assert "### `attrkit.compose(spec: 'SpecLike', task: 'AttributionTask'" in pages["attrkit.md"]
    assert "### class `attrkit.plugin.Projector" in pages["attrkit.plugin.md"]
    assert "#### `Component.check(" in pages["attrkit.plugin.md"]
    assert "- [solver](solver.md): " in pages["index.md"]


def test_python_m_attrkit_docs(tmp_path, offline):
    from attrkit.docs import main as docs_main

    assert docs_main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "projector.md").read_text().startswith("# projector components")


def test_write_docs_returns_the_pages(tmp_path, registry):
    written = write_docs(tmp_path / "x", registry)
    assert {p.name for p in written} >= {"index.md", "method.md"} and all(p.exists() for p in written)


def test_markdown_of_a_google_docstring():
    doc = '''Summary with ``code`` and :func:`~attrkit.compose.resolve`.

    Args:
        spec: a dict; continued
            here.
        task (AttributionTask): the task.

    Example:
        >>> attrkit.compose(spec, task)  # doctest: +SKIP
    '''
    assert markdown(doc) == (
        "Summary with `code` and `resolve`.\n\n"
        "**Args:**\n\n- **spec**: a dict; continued here.\n- **task** (AttributionTask): the task.\n\n"
        "**Example:**\n\n```python\nattrkit.compose(spec, task)\n```\n"
    )
