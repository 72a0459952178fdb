import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def repo_root():
    return REPO_ROOT
