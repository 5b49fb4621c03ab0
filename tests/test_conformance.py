"""Conformance checks generated from the registry: a new component is tested for free."""

import pytest

import attrkit
from attrkit.testing import check_component

ENTRIES = [entry for named in attrkit.default_registry().components().values() for entry in named.values()]


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.kind}:{e.name}" for e in ENTRIES])
def test_component_conforms(entry):
    if entry.unavailable:
        pytest.skip(entry.unavailable)
    check_component(entry)


def test_every_kind_but_ensemble_has_a_first_party_component():
    kinds = {e.kind for e in ENTRIES if e.plugin.distribution == "attrkit"}
    assert kinds >= {"method", "gradients", "projector", "solver", "grouper", "metric"}
