"""Fixtures shared by the DIVER tests: the zoo DiT, loaded once per module, on one torch thread."""

import pytest
import torch

from actors.dit import load_dit


@pytest.fixture(scope="module")
def one_thread():
    """The tiny DiT is fastest on one thread (and the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dit(zoo_dir):
    return load_dit("zoo:dit", device="cpu", dtype="float32")
