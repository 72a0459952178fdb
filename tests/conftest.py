import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# At most two intra-op threads; tools/run_tests.sh gives each pytest-xdist
# worker its share of the cores through OMP_NUM_THREADS.
torch.set_num_threads(
    min(2, int(os.environ.get('OMP_NUM_THREADS', 0)) or os.cpu_count() or 1))


@pytest.fixture
def repo_root():
    return REPO_ROOT
