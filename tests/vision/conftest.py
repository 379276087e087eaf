"""Vision tests run on one torch thread: the CI box has two shared cores."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)
