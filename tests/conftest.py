"""Shared fixtures: the live registry and a toy problem."""

import os

import pytest

os.environ.setdefault("ATTRKIT_PROGRESS", "0")

import attrkit  # noqa: E402
from attrkit.testing import toy_problem  # noqa: E402


@pytest.fixture(scope="session")
def registry():
    return attrkit.default_registry()


@pytest.fixture
def toy():
    return toy_problem()
