"""Shared fixtures: the live registry and a toy problem."""

import os

import pytest
import torch
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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny products and convolutions run faster on one thread, and on a busy machine waiting for a
    second one costs tens of seconds and saves nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registry():
    return attrkit.default_registry()


@pytest.fixture
def toy():
    return toy_problem()
