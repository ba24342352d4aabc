"""Fixtures shared by the world tests."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test: on small frames (the data tests) thread hand-offs cost
    more than they save on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
