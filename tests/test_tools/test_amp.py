"""bf16 on CPUs: tools/train.py --amp and tools/test.py --amp without a
GPU, a COCO config's own AmpOptimWrapper on a CPU, and how far bf16 moves
the outputs from fp32."""
import math

import pytest
import torch

from .utils import (BF16_LOG, FP32_LOG, build_model, cpu_bf16, losses,
                    metrics, read_checkpoint, run_tool)


def _check_trained_in_bf16(res, work):
    """The log says which precision ran; the losses stay finite."""
    logged = losses(res.out)
    assert len(logged) == 4, res.out[-3000:]
    assert all(math.isfinite(v) for v in logged), logged
    assert (work / 'iter_4.pth').is_file()
    if not cpu_bf16():
        assert FP32_LOG in res.out
        pytest.skip('this CPU has no native bfloat16: --amp trains in fp32 '
                    '(the fallback message was checked)')
    assert BF16_LOG in res.out


def test_train_amp_on_the_cpu(tiny, tmp_path):
    """The tiny configs (OptimWrapper) with --amp."""
    work = tmp_path / 'work'
    res = run_tool(['tools/train.py', tiny, '--amp', '--work-dir', work])
    _check_trained_in_bf16(res, work)


def test_coco_config_amp_optim_wrapper_runs_on_the_cpu(make_config,
                                                       tmp_path):
    """A COCO leaf names mmengine's AmpOptimWrapper (which asserts a GPU):
    tools/train.py trains it on a CPU as it is (only the tiny overrides)."""
    config = make_config('coco', 'tiny_coco_amp', keep_amp=True)
    with open(config) as f:
        assert "type='AmpOptimWrapper'" in f.read()
    work = tmp_path / 'work'
    res = run_tool(['tools/train.py', config, '--work-dir', work])
    _check_trained_in_bf16(res, work)


def test_test_amp_evaluates_the_checkpoint(trained, tmp_path):
    res = run_tool(['tools/test.py', trained.config, trained.ckpt(), '--amp',
                    '--work-dir', tmp_path])
    if cpu_bf16():
        assert 'mixed precision: torch.bfloat16 autocast' in res.out
    else:
        assert 'mixed precision: fp32 (this CPU has no native bfloat16)' \
            in res.out
    metrics(res.out, trained.task)


def _one_batch(config: str, model):
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    cfg = Config.fromfile(config)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import DATASETS
    else:
        from mmseg.registry import DATASETS
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(len(dataset))])
    return model.data_preprocessor(batch, False)


def _relative_error(ref, low):
    return ((ref - low.float()).norm() / ref.norm()).item()


def test_bf16_stays_close_to_fp32(trained):
    """The trained model on the held-out batch, fp32 and under bf16
    autocast: each backbone map within 2% (relative L2), and for the
    segmentor the per-pixel class the same on > 95% of the pixels."""
    model = build_model(trained.config)
    model.load_state_dict(read_checkpoint(trained.ckpt())['state_dict'])
    data = _one_batch(trained.config, model)
    with torch.no_grad():
        ref = model.backbone(data['inputs'])
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model.backbone(data['inputs'])
        assert len(ref) == len(low) == 4
        assert low[0].dtype == torch.bfloat16  # autocast did run
        for i, (a, b) in enumerate(zip(ref, low)):
            assert a.shape == b.shape
            assert _relative_error(a, b) < 0.02, i
        if trained.task == 'ade':
            ref = model(**data, mode='tensor')
            with torch.autocast('cpu', dtype=torch.bfloat16):
                low = model(**data, mode='tensor')
            agree = (ref.argmax(1) == low.float().argmax(1)).float().mean()
            assert agree.item() > 0.95
