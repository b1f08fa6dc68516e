"""Strategy tests run many tiny (often float64) convs: one thread avoids OpenMP threads waiting on each
other, which on a busy 2-core machine costs 10-100x."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
