"""Every Python block of this distribution's README runs, in order, as one module.

The blocks define a projector, two solvers and two methods, register them with
``attrkit.reset_registry(extra=...)`` and run attrkit's conformance kit on them; ``task``,
``train`` and ``test`` come from attrkit's toy problem. The default registry is rebuilt
from the installed plugins afterwards.
"""

import re
import sys
import types
from pathlib import Path

import pytest

import attrkit
from attrkit.testing import toy_problem

README = Path(__file__).resolve().parents[1] / "README.md"
MODULE = "attrkit_plugin_template_readme"


def _blocks():
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


@pytest.fixture
def readme_module():
    toy = toy_problem()
    module = types.ModuleType(MODULE)
    module.__dict__.update(attrkit=attrkit, task=toy.task, train=toy.train_loader(), test=toy.test_loader())
    sys.modules[MODULE] = module
    try:
        yield module
    finally:
        del sys.modules[MODULE]
        attrkit.reset_registry()


def test_the_readme_has_an_example_of_each_kind():
    code = "\n".join(_blocks())
    for base in ("plugin.Projector", "plugin.HessianSolver", "plugin.ParameterSolver", "plugin.GradientAttributor"):
        assert f"({base})" in code, base


def test_every_python_block_runs(readme_module):
    for i, block in enumerate(_blocks()):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), readme_module.__dict__)
        except Exception as exc:
            raise AssertionError(f"README.md python block {i} failed: {exc!r}\n{block}") from exc
    registry = attrkit.default_registry()
    names = {(e.kind, e.name) for named in registry.components().values() for e in named.values()}
    assert {("projector", "my-signs"), ("solver", "my-diagonal"), ("method", "my-tracin-last")} <= names
    assert registry.get("solver", "my-diagonal").plugin.name == "my-plugin"
