import pathlib

import pytest

FOREIGN = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'foreign'


@pytest.fixture
def foreign_dir():
    return FOREIGN
