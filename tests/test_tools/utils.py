"""Helpers of the tool tests: running the project's tools as a user does
(subprocesses from the repository root), the tiny configs derived from the
real COCO and ADE20k leaves, and reading what the tools wrote."""
import copy
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import NamedTuple, Optional

from tests.helpers import syncbn_to_bn

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# The leaves the tiny configs start from: everything not overridden below
# (model, pipelines' structure, optimizer and its wrapper, evaluators,
# hooks, runtime) is theirs.
LEAVES = dict(
    coco=osp.join(REPO_ROOT, 'configs/coco/mask_rcnn_xcit_t12_p16.py'),
    ade=osp.join(REPO_ROOT, 'configs/ade20k/fpn_xcit_t12_p16_80k.py'))

# The shapes data of the session: 8 training and 4 held-out 64 px images.
NUM_TRAIN, NUM_VAL, SIZE, SEED = 8, 4, 64, 0
DET_CLASSES = ('circle', 'rectangle', 'triangle')
SEG_CLASSES = ('background', ) + DET_CLASSES

TINY_ARCH = dict(embed_dims=64, depth=4, num_heads=2)  # 4 blocks, width 64
ITERS = 4  # checkpoints at 2 and 4, validation at 4
WIDTH = 32  # of the necks and heads


class Result(NamedTuple):
    code: int
    out: str  # stdout and stderr interleaved (or stdout alone if split)
    err: str  # stderr when split, else ''
    seconds: float


def run_tool(args, timeout: float = 600, env: Optional[dict] = None,
             check: bool = True, split: bool = False) -> Result:
    """Runs ``args`` (a tools/ script and its arguments) from the repository
    root with this interpreter, one intra-op thread per process (the
    distributed runs start two); ``split`` keeps stderr apart."""
    full_env = dict(os.environ)
    full_env.update({
        'PYTHON': sys.executable,  # for the dist_*.sh scripts
        'OMP_NUM_THREADS': '1',
        'MKL_NUM_THREADS': '1',
        'PYTHONUNBUFFERED': '1',
        'PYTHONWARNINGS': 'ignore::DeprecationWarning,ignore::UserWarning',
    })
    full_env.update(env or {})
    cmd = (['bash'] if str(args[0]).endswith('.sh') else [sys.executable]
           ) + [str(a) for a in args]
    start = time.time()
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=full_env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if split else subprocess.STDOUT,
        timeout=timeout)
    result = Result(proc.returncode, proc.stdout, proc.stderr or '',
                    time.time() - start)
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(cmd)} failed ({proc.returncode}) after '
            f'{result.seconds:.0f} s:\n{result.out[-6000:]}\n'
            f'{result.err[-3000:]}')
    return result


# --------------------------------------------------------------------------
# Tiny configs
# --------------------------------------------------------------------------
def _walk(node, fn):
    """Applies ``fn`` to every dict in a config tree (in place)."""
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _walk(value, fn)


def _shrink(factor: int):
    """Divides the sizes of pipeline transforms by ``factor``: the real
    pipelines, for 64 px images instead of COCO's and ADE20k's."""

    def size(value):
        return tuple(max(8, int(round(v / factor))) for v in value)

    def fn(node):
        for key in ('scale', 'crop_size'):
            if isinstance(node.get(key), (list, tuple)):
                node[key] = size(node[key])
        if isinstance(node.get('scales'), (list, tuple)):
            node['scales'] = [size(s) for s in node['scales']]

    return fn


def _loader(cfg_loader, dataset, batch_size):
    loader = copy.deepcopy(cfg_loader)
    loader.update(batch_size=batch_size, num_workers=0,
                  persistent_workers=False)
    loader['dataset'].update(dataset)
    return loader


def tiny_config(task: str, data_root: str, arch: Optional[dict] = None,
                keep_amp: bool = False):
    """The ``task`` leaf ('coco' or 'ade') shrunk for a CPU test: a 4-block
    XCiT of width 64 (``arch`` for another), BN, narrow necks and heads,
    the generated shapes data at 1/8 of the real image sizes, 4
    iterations (checkpoints at 2 and 4, validation at 4), no download.

    The COCO leaves train in mixed precision (``AmpOptimWrapper``, bf16 on
    a CPU); their tiny version trains in fp32 unless ``keep_amp`` (mixed
    precision is test_amp.py's subject)."""
    from mmengine.config import Config
    cfg = Config.fromfile(LEAVES[task])
    arch = dict(arch or TINY_ARCH)
    dims = arch['embed_dims']
    root = data_root.rstrip('/') + '/'
    cfg.custom_imports = dict(
        imports=['xcit_mm', 'xcit_mm.datasets'], allow_failed_imports=False)
    cfg.model.backbone.update(arch=arch, init_cfg=None, drop_path_rate=0.0)
    cfg.model.neck.update(in_channels=[dims] * 4, out_channels=WIDTH)
    if task == 'coco':
        cfg.model.backbone.with_cp = True  # gradient checkpointing under DDP
        cfg.model.rpn_head.update(in_channels=WIDTH, feat_channels=WIDTH)
        roi = cfg.model.roi_head
        roi.bbox_roi_extractor.out_channels = WIDTH
        roi.mask_roi_extractor.out_channels = WIDTH
        roi.bbox_head.update(in_channels=WIDTH, fc_out_channels=64,
                             num_classes=len(DET_CLASSES))
        roi.mask_head.update(in_channels=WIDTH, conv_out_channels=WIDTH,
                             num_classes=len(DET_CLASSES))
        cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        cfg.model.train_cfg.rcnn.sampler.num = 64
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
        cfg.model.test_cfg.rcnn.max_per_img = 20
        if not keep_amp:
            cfg.optim_wrapper.type = 'OptimWrapper'
            cfg.optim_wrapper.pop('loss_scale', None)
        data = dict(type='ShapesDataset', data_root=root)
        cfg.train_dataloader = _loader(cfg.train_dataloader, dict(
            data, ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/')), 2)
        cfg.val_dataloader = _loader(cfg.val_dataloader, dict(
            data, ann_file='annotations/instances_val.json',
            data_prefix=dict(img='val/')), 2)
        for key in ('val_evaluator', 'test_evaluator'):
            cfg[key].ann_file = root + 'annotations/instances_val.json'
        # the COCO schedule is in epochs of 118k images: iterations here
        cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS,
                             val_interval=ITERS)
        cfg.param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                 begin=0, end=ITERS)
        ]
        cfg.default_hooks.checkpoint.by_epoch = False
    else:
        cfg.model.data_preprocessor.size = (SIZE, SIZE)  # the crop
        cfg.model.decode_head.update(in_channels=[WIDTH] * 4, channels=16,
                                     num_classes=len(SEG_CLASSES))
        data = dict(type='ShapesSegDataset', data_root=root)
        cfg.train_dataloader = _loader(cfg.train_dataloader, data, 2)
        cfg.val_dataloader = _loader(cfg.val_dataloader, data, 1)
        cfg.train_cfg.update(max_iters=ITERS, val_interval=ITERS)
        cfg.param_scheduler = [
            dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False,
                 begin=0, end=ITERS)
        ]
        _walk(cfg.tta_pipeline, _shrink(8))
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        _walk(cfg[loader], _shrink(8))
    cfg.log_processor = dict(type='LogProcessor', window_size=1,
                             by_epoch=False)
    cfg.default_hooks.logger.update(interval=1, log_metric_by_epoch=False)
    cfg.default_hooks.checkpoint.update(interval=2)
    cfg.randomness = dict(seed=0)
    syncbn_to_bn(cfg._cfg_dict)
    # the leaves' own variables, now stale copies of what was changed above
    for key in ('data_root', 'dataset_type', 'crop_size', 'multi_scales',
                'train_pipeline', 'test_pipeline', 'data_preprocessor',
                'img_ratios', 'pretrained', 'norm_cfg', 'max_iters',
                'warmup_iters'):
        cfg.pop(key, None)
    return cfg


def write_config(cfg, path) -> str:
    cfg.dump(str(path))
    return str(path)


def build_model(config_path: str):
    """The model of a config, built in this process (fp32, eval mode)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope, init_default_scope
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(config_path)
    import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.default_scope
    if DefaultScope.get_current_instance() is None or \
            DefaultScope.get_current_instance().scope_name != scope:
        init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model).eval()


# --------------------------------------------------------------------------
# Reading what the tools wrote
# --------------------------------------------------------------------------
def read_checkpoint(path) -> dict:
    from xcit_mm.weights import read_checkpoint as read
    return read(str(path))


def lr_at(log: str, iteration: int) -> float:
    m = re.search(
        rf'Iter\(train\)\s*\[\s*{iteration}/\d+\].*? lr: ([\d.e+-]+)', log)
    assert m, f'no training log line for iteration {iteration}:\n{log[-3000:]}'
    return float(m.group(1))


def losses(log: str):
    """Every ``loss: X`` of the training log lines, as floats (nan and inf
    included, as logged)."""
    return [float(v) for v in re.findall(
        r'Iter\(train\).*?\sloss: ([-+\w.]+)', log)]


def metrics(log: str, task: str, mode: str = 'test') -> dict:
    """The headline metrics of the last ``mode`` ('val' or 'test')
    evaluation a tool printed: bbox and segm mAP (COCO) or mIoU (ADE),
    each checked to be a valid number."""
    if task == 'coco':
        found = re.findall(
            rf'Iter\({mode}\) \[\d+/\d+\]\s+coco/bbox_mAP: (-?[\d.]+).*?'
            r'coco/segm_mAP: (-?[\d.]+)', log)
        assert found, f'no {mode} bbox and segm mAP:\n{log[-3000:]}'
        box, mask = map(float, found[-1])
        assert 0 <= box <= 1 and 0 <= mask <= 1
        return dict(bbox_mAP=box, segm_mAP=mask)
    found = re.findall(
        rf'Iter\({mode}\) \[\d+/\d+\]\s+aAcc: [\d.]+\s+mIoU: ([\d.]+)', log)
    assert found, f'no {mode} mIoU line in the output:\n{log[-3000:]}'
    assert 0 <= float(found[-1]) <= 100
    return dict(mIoU=float(found[-1]))


# --------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------
def cpu_bf16() -> bool:
    from xcit_mm.engine import cpu_supports_bf16
    return cpu_supports_bf16()


BF16_LOG = ('mixed precision: no GPU: bfloat16 autocast on the CPU '
            '(AutoAmpOptimWrapper)')
FP32_LOG = ('mixed precision: no GPU, and this CPU has no native bfloat16: '
            'training in fp32 (AutoAmpOptimWrapper)')
