"""Shared fixtures: the live registry and a toy problem."""

import os

import pytest
from hypothesis import settings

# CI runs each property on the same examples every time: a red CI is always reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("ATTRKIT_PROGRESS", "0")
# Benchmark ground truth retrains in this process (spawning workers costs seconds per call);
# tests/test_retraining.py exercises the worker processes on purpose.
os.environ.setdefault("ATTRKIT_BENCH_WORKERS", "1")

import attrkit  # noqa: E402
from attrkit.testing import toy_problem  # noqa: E402


@pytest.fixture(scope="session")
def registry():
    return attrkit.default_registry()


@pytest.fixture
def toy():
    return toy_problem()
