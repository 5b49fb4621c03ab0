"""Import rules: the core never imports a plugin; one plugin never imports another."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_plugins_or_benchmarks():
    for path in (ROOT / "attrkit").rglob("*.py"):
        bad = {n for n in _imports(path) if n.startswith(("attrkit_plugins", "attrkit_bench"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_plugins_do_not_import_each_other():
    for path in (ROOT / "plugins" / "attrkit_plugins").rglob("*.py"):
        bad = {n for n in _imports(path) if n.startswith("attrkit_plugins")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
