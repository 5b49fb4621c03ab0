"""Every public module, class and function of attrkit and its plugins has a docstring."""

import importlib
import inspect
import pkgutil

import pytest

import attrkit
import attrkit_plugins


def _modules():
    for package in (attrkit, attrkit_plugins):
        yield package.__name__
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_public_names_are_documented(name):
    module = importlib.import_module(name)
    assert inspect.getdoc(module), f"module {name} has no docstring"
    missing = [
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == name
        and not inspect.getdoc(value)
    ]
    assert not missing, f"{name}: undocumented {missing}"
