"""tools/dist_train.sh, dist_test.sh, train.py and test.py end to end, as a
user runs them: COCO instance segmentation (Mask R-CNN) and ADE20k semantic
segmentation (Semantic FPN) from tiny versions of the real leaves, on the
generated shapes data, 2 CPU processes where the scripts launch them.

One 2-process training per task (conftest.py) is shared by every test."""
import os.path as osp
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from .utils import (DET_CLASSES, NUM_VAL, REPO_ROOT, SEG_CLASSES, SIZE,
                    lr_at, metrics, read_checkpoint, run_tool)

CLASSES = dict(coco=DET_CLASSES, ade=SEG_CLASSES)


def test_distributed_training_writes_checkpoints(trained):
    log = trained.log
    assert 'distributed on the CPU with gloo, 2 processes' in log
    assert 'Iter(train) [4/4]' in log
    metrics(log, trained.task, 'val')  # validated at the last iteration
    assert osp.isfile(trained.ckpt(2)) and osp.isfile(trained.ckpt(4))
    ckpt = read_checkpoint(trained.ckpt(4))
    assert ckpt['meta']['iter'] == 4
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == \
        CLASSES[trained.task]
    state = ckpt['state_dict']
    assert any(k.startswith('backbone.blocks.3.attn.') for k in state)
    assert not any(k.startswith('module.') for k in state)  # DDP unwrapped
    head = ('roi_head.bbox_head.fc_cls.weight' if trained.task == 'coco'
            else 'decode_head.conv_seg.weight')
    # fc_cls has a background row; conv_seg one channel per class
    assert state[head].shape[0] == len(CLASSES[trained.task]) + (
        trained.task == 'coco')


def test_distributed_test_prints_the_real_metrics(trained, tmp_path):
    res = run_tool([
        'tools/dist_test.sh', trained.config, trained.ckpt(), '2',
        '--work-dir', tmp_path, '--show-dir', 'shows'
    ])
    print(f'{trained.task}: 2-process test {res.seconds:.1f} s')
    metrics(res.out, trained.task, 'test')
    if trained.task == 'coco':
        assert re.search(r'coco/bbox_mAP: [\d.]+', res.out)
        assert re.search(r'coco/segm_mAP: [\d.]+', res.out)
        # the real COCO evaluator's summary tables, boxes then masks
        assert res.out.count(
            'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') == 2
    else:
        assert 'Iter(test) [2/2]' in res.out  # 4 images over 2 processes
        # mmseg's per-class table, with the data's class names
        for name in SEG_CLASSES:
            assert re.search(rf'\|\s+{name}\s+\|\s+[\d.]+\s+\|', res.out)
    # the visualizers draw on the first process only: said, not silent
    assert '--show/--show-dir with 2 processes draws the images of the ' \
        'first process only' in res.out


def test_out_and_show_dir_keep_every_image(trained, tmp_path):
    """One process: --out holds a prediction for every held-out image and
    --show-dir draws each of them inside the work dir."""
    work = tmp_path / 'work'
    out = tmp_path / ('preds.pkl' if trained.task == 'coco' else 'preds')
    res = run_tool([
        'tools/test.py', trained.config, trained.ckpt(), '--work-dir', work,
        '--out', out, '--show-dir', 'shows'
    ])
    metrics(res.out, trained.task)
    names = [f'val_{i:05d}.png' for i in range(NUM_VAL)]
    if trained.task == 'coco':
        with open(out, 'rb') as f:
            preds = pickle.load(f)
        assert sorted(osp.basename(p['img_path']) for p in preds) == names
        assert all('masks' in p['pred_instances'] for p in preds)
    else:
        maps = sorted(out.glob('*.png'))
        assert [p.name for p in maps] == names
        labels = np.array(Image.open(maps[0]))
        # in the dataset's own numbering: 1..4 (0 stays "unlabelled")
        assert labels.shape == (SIZE, SIZE)
        assert 1 <= labels.min() and labels.max() <= len(SEG_CLASSES)
    assert len(list(work.rglob('shows/**/*.png'))) == NUM_VAL
    assert not osp.exists(osp.join(REPO_ROOT, 'shows'))


def test_resume_continues_iteration_lr_and_optimizer(trained, tmp_path):
    """Resumed from iteration 2 in one process with the same total batch,
    training goes on at iteration 3 with the lr of the 2-process run there,
    and AdamW's state carries on (step 4 at the end)."""
    resumed = tmp_path / 'resumed'
    res = run_tool([
        'tools/train.py', trained.config, '--work-dir', resumed, '--resume',
        trained.ckpt(2), '--cfg-options', 'train_dataloader.batch_size=4'
    ])
    assert 'resumed epoch: 0, iter: 2' in res.out
    assert 'Iter(train) [1/4]' not in res.out
    assert 'Iter(train) [3/4]' in res.out
    for iteration in (3, 4):
        assert lr_at(res.out, iteration) == pytest.approx(
            lr_at(trained.log, iteration), rel=1e-6)
    ckpt = read_checkpoint(resumed / 'iter_4.pth')
    assert ckpt['meta']['iter'] == 4
    steps = {int(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert steps == {4}
    before = read_checkpoint(trained.ckpt(2))
    assert {int(s['step']) for s in
            before['optimizer']['state'].values()} == {2}


def test_ade_tta_prints_miou(ade_trained, tmp_path):
    res = run_tool([
        'tools/test.py', ade_trained.config, ade_trained.ckpt(),
        '--work-dir', tmp_path, '--tta'
    ])
    print(f'ade: test with TTA {res.seconds:.1f} s')
    assert "type='SegTTAModel'" in res.out
    assert 'TestTimeAug' in res.out
    metrics(res.out, 'ade')


def test_coco_tta_is_refused_with_the_reason(coco_trained, tmp_path):
    """mmdet 3 cannot merge masks across augmentations: --tta says so."""
    res = run_tool([
        'tools/test.py', coco_trained.config, coco_trained.ckpt(),
        '--work-dir', tmp_path, '--tta'
    ], check=False)
    assert res.code != 0
    assert 'cannot merge instance masks' in res.out
    assert 'Traceback' not in res.out


def _to_authors_name(key: str) -> str:
    """xcit_mm's key -> the authors' mmdet 2.x / mmseg 0.x release."""
    key = key.replace('backbone.pos_embed.', 'backbone.pos_embeder.')
    m = re.match(r'backbone\.adapter\.levels\.(\d)\.(.+)', key)
    if m:
        key = f'backbone.fpn{int(m.group(1)) + 1}.{m.group(2)}'
    return key


def test_authors_release_converts_and_tests_strictly(trained, tmp_path):
    """A whole model in the authors' layout (pos_embeder, fpn1..fpn4, as
    their mmdet 2.x / mmseg 0.x release), through
    tools/model_converters/xcit2mm.py, loads into the config strictly in
    tools/test.py, every tensor in its place."""
    ours = read_checkpoint(trained.ckpt())['state_dict']
    authors = {_to_authors_name(k): v for k, v in ours.items()}
    assert any(k.startswith('backbone.fpn1.') for k in authors)
    assert any(k.startswith('backbone.pos_embeder.') for k in authors)
    src = tmp_path / 'authors.pth'
    version = ('mmdet_version', '2.11.0') if trained.task == 'coco' else \
        ('mmseg_version', '0.11.0')
    torch.save({'state_dict': authors,
                'meta': dict([version], CLASSES=CLASSES[trained.task])}, src)
    dst = tmp_path / 'converted.pth'
    res = run_tool(['tools/model_converters/xcit2mm.py', src, dst])
    assert 'authors-dense layout, whole model' in res.out
    converted = read_checkpoint(dst)['state_dict']
    assert set(converted) == set(ours)
    for k, v in converted.items():
        assert torch.equal(v, ours[k]), k
    res = run_tool(['tools/test.py', trained.config, dst, '--work-dir',
                    tmp_path / 'work'])  # strict: exits 1 unless all fits
    assert 'does not fit' not in res.out
    metrics(res.out, trained.task)
    # the same metrics as the checkpoint it was made from
    ref = run_tool(['tools/test.py', trained.config, trained.ckpt(),
                    '--work-dir', tmp_path / 'ref'])
    assert metrics(res.out, trained.task) == metrics(ref.out, trained.task)
