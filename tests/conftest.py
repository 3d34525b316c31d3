"""Fixtures every test gets."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """Kill the worker processes a test started and left running (it failed half-way).

    A worker left appending forever would hold the test run's output open,
    and the run would never end. Only the standard library's processes:
    joblib keeps its own pool of workers alive between calls on purpose.
    """
    yield
    for child in multiprocessing.active_children():
        if type(child).__module__.startswith("multiprocessing"):
            with contextlib.suppress(OSError):
                child.kill()
            child.join(10)
