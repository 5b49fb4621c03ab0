"""Layers, enforced on the source: who may import what.

    foundation   attrkit.{errors, types, data, distributed, memory, progress, checks, fingerprint}
                 import only each other
    functional   attrkit.functional imports only the foundation (and itself)
    core         the rest of attrkit; never names a plugin or the benchmarks
    plugins      import only attrkit, attrkit.plugin and attrkit.functional (never each other),
                 and no underscore name
    contrib      the same rule as first-party plugins
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = {f"attrkit.{m}" for m in ("errors", "types", "data", "distributed", "memory", "progress", "checks",
                                         "fingerprint")}
PLUGIN_API = ("attrkit", "attrkit.plugin", "attrkit.functional")


def _imports(path):
    """``[(module, name or None)]`` of every absolute import in ``path`` (``from m import n`` gives ``(m, n)``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name) for a in node.names]
    return out


def _attrkit_modules(path):
    """The attrkit modules ``path`` imports: ``from attrkit import x`` counts as ``attrkit.x`` when x is a module."""
    found = set()
    for module, name in _imports(path):
        if module == "attrkit" and name is not None and (ROOT / "attrkit" / f"{name}.py").exists():
            found.add(f"attrkit.{name}")
        elif module == "attrkit" or module.startswith("attrkit."):
            found.add(module)
    return found


def _module(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _plugin_files():
    yield from (ROOT / "plugins" / "attrkit_plugins").rglob("*.py")
    yield from (p for p in (ROOT / "contrib").rglob("*.py") if "/src/" in str(p))


def test_core_never_imports_plugins_or_benchmarks():
    for path in (ROOT / "attrkit").rglob("*.py"):
        bad = {m for m, _ in _imports(path) if m.startswith(("attrkit_plugins", "attrkit_bench"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_the_foundation_imports_only_itself(name):
    path = ROOT / (name.replace(".", "/") + ".py")
    bad = _attrkit_modules(path) - FOUNDATION
    assert not bad, f"{name} (foundation) imports {bad}; the foundation imports only {sorted(FOUNDATION)}"


def test_functional_imports_only_the_foundation():
    for path in (ROOT / "attrkit" / "functional").rglob("*.py"):
        bad = {m for m in _attrkit_modules(path) if m not in FOUNDATION and not m.startswith("attrkit.functional")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: attrkit.functional may import only {sorted(FOUNDATION)}"


def test_plugins_import_only_the_public_plugin_api():
    for path in _plugin_files():
        for module, name in _imports(path):
            if module.startswith("attrkit_plugins") and "contrib" not in str(path):
                pytest.fail(f"{path.relative_to(ROOT)} imports {module}: plugins never import one another")
            if module == "attrkit" or module.startswith("attrkit."):
                public = module in PLUGIN_API or module.startswith("attrkit.functional.")
                assert public, f"{path.relative_to(ROOT)} imports {module}; plugins import only {PLUGIN_API}"
                underscored = any(part.startswith("_") for part in module.split(".")) or (name or "").startswith("_")
                assert not underscored, f"{path.relative_to(ROOT)} imports the private {module}.{name}"


def test_the_rule_finds_an_underscore_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from attrkit.plugin import _private\nfrom attrkit._secret import x\n")
    found = [(m, n) for m, n in _imports(bad) if m.startswith("attrkit") and (n.startswith("_") or "._" in m)]
    assert found == [("attrkit.plugin", "_private"), ("attrkit._secret", "x")]


# -- the benchmarks (benchmarks/attrkit_bench) use attrkit's public surface only -------------

#: What the benchmark imports from attrkit. ``attrkit.properties`` is there for ``mean_loss``
#: (GGDA's property function), which attrkit does not export at the top level.
BENCH_API = ("attrkit", "attrkit.plugin", "attrkit.functional", "attrkit.testing", "attrkit.distributed",
             "attrkit.checks", "attrkit.properties")
#: Underscore attributes that belong to no attrkit object (namedtuple's API, CPython, torch's tensor version).
FOREIGN_PRIVATE = frozenset({"_asdict", "_replace", "_fields", "_make", "_exit", "_getframe", "_version"})


def _private_names(path):
    """``[(line, code)]``: reads of ``x._name`` where ``x`` is not ``self``/``cls``, and ``getattr``/
    ``hasattr``/``setattr`` of a literal ``"_name"`` (dunders and :data:`FOREIGN_PRIVATE` aside)."""

    def private(name):
        return name.startswith("_") and not name.startswith("__") and name not in FOREIGN_PRIVATE

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and private(node.args[1].value)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def _bench_problems(path):
    """Why ``path`` breaks the bench's rule: private or non-public attrkit imports, private attribute reads."""
    problems = []
    for module, name in _imports(path):
        if module == "attrkit" or module.startswith("attrkit."):
            if any(part.startswith("_") for part in module.split(".")) or (name or "").startswith("_"):
                problems.append(f"imports the private {module if name is None else f'{module}.{name}'}")
            elif not (module in BENCH_API or module.startswith("attrkit.functional.")):
                problems.append(f"imports {module}; the bench imports only {BENCH_API}")
    problems += [f"line {line}: reads the private {code}" for line, code in _private_names(path)]
    return problems


def test_the_bench_uses_only_attrkits_public_surface():
    files = sorted((ROOT / "benchmarks" / "attrkit_bench").rglob("*.py"))
    assert files
    for path in files:
        problems = _bench_problems(path)
        assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_bench_rule_finds_private_use(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import attrkit._secret\nfrom attrkit.engine import Fit\nfrom attrkit.plugin import _private\n"
                   "fitted = attributor._fitted\nstate = getattr(attributor, '_fitted')\n"
                   "self._ok, cls._ok, name = 1, 2, type(t).__name__\nversion = t._version\n")
    assert _bench_problems(bad) == [
        "imports the private attrkit._secret",
        f"imports attrkit.engine; the bench imports only {BENCH_API}",
        "imports the private attrkit.plugin._private",
        "line 4: reads the private attributor._fitted",
        "line 5: reads the private getattr(attributor, '_fitted')",
    ]
