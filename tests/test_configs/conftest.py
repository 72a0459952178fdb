import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for these tests: on 64x64 inputs a second thread
    only adds synchronisation, and it spins when the cores are shared (twice
    the wall time then)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
