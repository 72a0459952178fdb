"""Fixtures of the tool tests, shared by every file here and computed once
per session: the tiny shapes data, the tiny COCO and ADE20k configs derived
from the real leaves, one 2-process training of each (its checkpoints are
reused by the test, resume, fault and AMP tests) and the shortened demo.

Tests that apply to COCO and ADE20k alike take the ``task`` fixture (or
``tiny``/``trained``): they run once for each."""
import os.path as osp
from typing import NamedTuple

import pytest

from tests.helpers import tools_module

from .utils import (NUM_TRAIN, NUM_VAL, SEED, SIZE, run_tool, tiny_config,
                    write_config)

TASKS = ('coco', 'ade')


class Trained(NamedTuple):
    task: str
    config: str
    work: str
    log: str

    def ckpt(self, iteration: int = 4) -> str:
        return osp.join(self.work, f'iter_{iteration}.pth')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (``--dist loadgroup``), the tests that share a
    task's 2-process training run on one worker, so that each training
    runs once."""
    for item in items:
        names = set(getattr(item, 'fixturenames', ()))
        callspec = getattr(item, 'callspec', None)
        task = callspec.params.get('task') if callspec else None
        for name in TASKS:
            if f'{name}_trained' in names or ('trained' in names
                                              and task == name):
                item.add_marker(pytest.mark.xdist_group(f'{name}_trained'))


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory) -> str:
    """8 training and 4 held-out 64 px images, COCO and ADE20k layouts."""
    root = str(tmp_path_factory.mktemp('shapes'))
    tools_module('shapes_data').generate(root, NUM_TRAIN, NUM_VAL, SIZE,
                                         SEED, progress=False)
    return root


@pytest.fixture(scope='session')
def configs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('configs')


def _config(task, shapes_root, configs_dir, name=None, **kwargs):
    path = configs_dir / f'{name or "tiny_" + task}.py'
    if not path.exists():
        write_config(tiny_config(task, shapes_root, **kwargs), path)
    return str(path)


@pytest.fixture(scope='session')
def make_config(shapes_root, configs_dir):
    """``make_config(task, name, **tiny_config options)``: a variant of a
    tiny config, written once per session under ``name``."""

    def make(task, name, **kwargs):
        return _config(task, shapes_root, configs_dir, name, **kwargs)

    return make


@pytest.fixture(scope='session')
def coco_config(shapes_root, configs_dir) -> str:
    return _config('coco', shapes_root, configs_dir)


@pytest.fixture(scope='session')
def ade_config(shapes_root, configs_dir) -> str:
    return _config('ade', shapes_root, configs_dir)


def _train(task, config, tmp_path_factory) -> Trained:
    work = str(tmp_path_factory.mktemp(f'{task}_work'))
    res = run_tool(['tools/dist_train.sh', config, '2', '--work-dir', work])
    print(f'{task}: tiny 2-process training {res.seconds:.1f} s')
    return Trained(task, config, work, res.out)


@pytest.fixture(scope='session')
def coco_trained(coco_config, tmp_path_factory) -> Trained:
    return _train('coco', coco_config, tmp_path_factory)


@pytest.fixture(scope='session')
def ade_trained(ade_config, tmp_path_factory) -> Trained:
    return _train('ade', ade_config, tmp_path_factory)


@pytest.fixture(params=TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture
def tiny(task, request) -> str:
    """The tiny config of ``task``."""
    return request.getfixturevalue(f'{task}_config')


@pytest.fixture
def trained(task, request) -> Trained:
    """The 2-process training of ``task``'s tiny config."""
    return request.getfixturevalue(f'{task}_trained')


class Demo(NamedTuple):
    root: str  # holds work/{det,seg}/ and data/
    out: str

    def work(self, task: str) -> str:
        return osp.join(self.root, 'work', task)

    def metrics(self, task: str) -> dict:
        import json
        with open(osp.join(self.work(task), 'metrics.json')) as f:
            return json.load(f)


@pytest.fixture(scope='session')
def demo(tmp_path_factory) -> Demo:
    """The README's demo, shortened: tools/demo.py --seg with 4 iterations
    on its own tiny generated data, in its default precision (bf16 on a CPU
    that has it)."""
    root = str(tmp_path_factory.mktemp('demo'))
    res = run_tool([
        'tools/demo.py', '--work-dir', osp.join(root, 'work'), '--data-root',
        osp.join(root, 'data'), '--num-train', NUM_TRAIN, '--num-val',
        NUM_VAL, '--size', SIZE, '--iters', 4, '--num-overlays', 3, '--seg'
    ])
    print(f'shortened demo: {res.seconds:.1f} s')
    return Demo(root, res.out)
