import os

import pytest
import torch

# Two cores on CI: keep each test single-threaded so parallel work does not oversubscribe.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
