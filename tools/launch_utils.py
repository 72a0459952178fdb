"""What tools/train.py, test.py and infer.py share: reading a config with
clear errors, mixed precision on any device, and distributed runs on
machines without a GPU.

On GPUs mmengine's own launcher is used unchanged. Without one, mmengine
0.10's ``pytorch`` launcher calls ``torch.cuda.set_device`` and its runner
passes ``device_ids=[LOCAL_RANK]`` to DDP, both of which fail; and SyncBN
does not run under gloo. :func:`init_cpu_distributed` starts the gloo process
group before the runner (which then skips its own ``init_dist``) and selects
``xcit_mm``'s ``CPUCompatibleDDP`` wrapper.
"""
import atexit
import gc
import os
import os.path as osp
import sys
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

SCOPES = ('mmdet', 'mmseg')


def _suggest(path: str) -> str:
    """' Did you mean ...?' with the closest configs beside ``path``."""
    import difflib
    folder = osp.dirname(path) or '.'
    if not osp.isdir(folder):
        return f' (no folder {folder!r} either)'
    names = [n for n in os.listdir(folder) if n.endswith('.py')]
    close = difflib.get_close_matches(osp.basename(path), names, n=3,
                                      cutoff=0.6)
    if close:
        return ' Did you mean: ' + ', '.join(
            osp.join(folder, n) for n in close) + '?'
    return ''


def _syntax_error(path: str, child: Optional[str] = None) -> Optional[str]:
    """Names the config file (``path`` or one of its local ``_base_``
    files) whose Python does not parse, with the line, and its child."""
    import ast
    with open(path, encoding='utf-8') as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        via = f' (a _base_ of {child})' if child else ''
        return (f'{path}{via}, line {err.lineno}: {err.msg}. Fix the '
                'Python syntax of that file.')
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, 'id', None) == '_base_' for t in node.targets):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                break
            for base in [bases] if isinstance(bases, str) else bases:
                base = osp.normpath(osp.join(osp.dirname(path), base))
                if '::' not in base and osp.isfile(base):
                    found = _syntax_error(base, path)
                    if found:
                        return found
    return None


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Reads a config, merges ``--cfg-options`` and checks its scope.

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: the config (or a ``_base_`` of it, named) does not
            parse, or its ``default_scope`` is not mmdet or mmseg.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'Config file not found: {path!r}.{_suggest(path)}')
    try:
        cfg = Config.fromfile(path)
    except SyntaxError:
        raise ValueError(_syntax_error(path) or f'{path}: a syntax error in '
                         'this config or one of its bases.') from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(
            f'{path}: default_scope must be one of {SCOPES} (mmdet for '
            f'detection, mmseg for segmentation), got {scope!r}.')
    return cfg


def set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]):
    """``--work-dir`` > ``cfg.work_dir`` > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def _check_path(path: str, what: str, config_key: str):
    if path and not osp.exists(path):
        raise FileNotFoundError(
            f'{what} not found: {path!r}. Put the data there, or point '
            f'the config elsewhere with --cfg-options {config_key}=...')


def check_dataset_paths(cfg: Config, split: str):
    """Fails early, naming the path, when a split's data is missing."""
    loader = cfg.get(f'{split}_dataloader')
    if not loader:
        return
    dataset = loader['dataset']
    while 'dataset' in dataset:  # wrappers such as RepeatDataset
        dataset = dataset['dataset']
    root = dataset.get('data_root', '') or ''
    key = f'{split}_dataloader.dataset.data_root'
    _check_path(root, 'data_root', key)
    ann = dataset.get('ann_file')
    if ann:
        _check_path(osp.join(root, ann), 'Annotation file',
                    f'{split}_dataloader.dataset.ann_file')
    prefix = dataset.get('data_prefix') or {}
    for name in ('img', 'img_path', 'seg_map_path'):
        if prefix.get(name):
            _check_path(osp.join(root, prefix[name]), f'{name} folder',
                        f'{split}_dataloader.dataset.data_prefix.{name}')


def setup_amp(cfg: Config, enable: bool) -> Optional[str]:
    """``--amp`` of the training tool: mixed precision on any device.

    With a GPU, ``AmpOptimWrapper`` as in mmdet's and mmseg's tools. On a
    CPU, ``AutoAmpOptimWrapper`` (bfloat16 autocast where the CPU has it,
    fp32 otherwise); a config that already names ``AmpOptimWrapper`` gets it
    too, since mmengine's asserts a GPU. Returns what it chose, for the log.
    """
    wrapper = cfg.get('optim_wrapper') or {}
    kind = wrapper.get('type', 'OptimWrapper')
    on_gpu = torch.cuda.is_available()
    if enable and kind == 'OptimWrapper':
        wrapper['type'] = 'AmpOptimWrapper' if on_gpu else \
            'AutoAmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
    elif not on_gpu and kind == 'AmpOptimWrapper':
        wrapper['type'] = 'AutoAmpOptimWrapper'
    else:
        return None
    if on_gpu:
        return 'AmpOptimWrapper (fp16 autocast with a loss scaler)'
    from xcit_mm.engine import cpu_supports_bf16
    if cpu_supports_bf16():
        return 'no GPU: bfloat16 autocast on the CPU (AutoAmpOptimWrapper)'
    return ('no GPU, and this CPU has no native bfloat16: training in fp32 '
            '(AutoAmpOptimWrapper)')


def _fp32_outputs(obj):
    """bfloat16 tensors in predictions -> float32 (numpy, which evaluators
    and visualisers call, has no bfloat16)."""
    from mmengine.structures import BaseDataElement
    if torch.is_tensor(obj):
        return obj.float() if obj.dtype == torch.bfloat16 else obj
    if isinstance(obj, BaseDataElement):
        for key, value in list(obj.items()):
            setattr(obj, key, _fp32_outputs(value))
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fp32_outputs(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _fp32_outputs(v) for k, v in obj.items()}
    return obj


def autocast_test_step(model: torch.nn.Module):
    """Runs ``model.test_step`` in mixed precision: fp16 autocast on a GPU;
    on a CPU bfloat16 autocast (mmcv's NMS and RoIAlign in float32), with
    the predictions returned in float32; fp32 (nothing changed) on a CPU
    without native bfloat16. Returns what it chose, for the log."""
    if torch.cuda.is_available():
        dtype, device = torch.float16, 'cuda'
    else:
        from xcit_mm.engine import cpu_supports_bf16, fp32_mmcv_ops_on_cpu
        if not cpu_supports_bf16():
            return 'fp32 (this CPU has no native bfloat16)'
        fp32_mmcv_ops_on_cpu()
        dtype, device = torch.bfloat16, 'cpu'
    test_step = model.test_step

    def mixed_precision_test_step(data):
        with torch.autocast(device, dtype=dtype):
            outputs = test_step(data)
        return _fp32_outputs(outputs)

    model.test_step = mixed_precision_test_step
    return f'{dtype} autocast'


def _destroy_process_group():
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_cpu_distributed(code: int = 0):
    """Ends a CPU-distributed run that completed: waits for every rank,
    closes the gloo group and leaves the process at once.

    Left to the interpreter's own exit, a gloo rank that has finished all
    its work sometimes aborts in C++ teardown ("terminate called without an
    active exception", exit -6), which torchrun reports as a failed job.
    Call it only after the work is done and written: it skips the remaining
    interpreter clean-up.
    """
    gc.collect()  # shuts down the dataloader workers of a finished runner
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    import logging
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _kill_workers():
    """At exit, before multiprocessing's own clean-up (which would wait for
    workers that ignore its SIGTERM): ends the daemonic children."""
    import multiprocessing
    import signal
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # no "worker killed" error
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def guard_dataloader_workers():
    """Makes every process forked from this one from now on (dataloader
    workers: mmengine's start method on Linux is fork) die with it (Linux
    ``PR_SET_PDEATHSIG``, so a rank killed with -9 leaves no worker behind)
    and leave SIGINT and SIGTERM to it (it ends its iteration, saves, and
    stops them). Seeding and the config are untouched."""
    import signal
    parent = [os.getpid()]

    def in_child():
        if sys.platform.startswith('linux'):
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent[0]:  # it died before prctl
                os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    os.register_at_fork(before=lambda: parent.__setitem__(0, os.getpid()),
                        after_in_child=in_child)
    atexit.register(_kill_workers)


def dist_timeout(cfg) -> float:
    """The seconds a rank waits for the others in a collective before it
    fails: ``env_cfg.dist_cfg.timeout`` (as in mmengine), else torch's
    default of 1800."""
    env = cfg.get('env_cfg') or {}
    return float((env.get('dist_cfg') or {}).get('timeout') or 1800)


def timeout_message(cfg) -> str:
    """What a rank says when a collective timed out (gloo does not say
    which peer it waited for: the others are named)."""
    rank, size = dist.get_rank(), dist.get_world_size()
    others = ', '.join(str(r) for r in range(size) if r != rank)
    return (f'rank {rank}: no answer from rank {others} within '
            f'{dist_timeout(cfg):.0f} s (env_cfg.dist_cfg.timeout): a rank '
            'stopped, froze or died. Raise the timeout with --cfg-options '
            'env_cfg.dist_cfg.timeout=SECONDS if a step can take that long.')


def init_cpu_distributed(launcher: str, cfg) -> bool:
    """Starts gloo and selects :class:`CPUCompatibleDDP` when ``launcher``
    is ``'pytorch'`` and no GPU is present. Returns whether it did."""
    if launcher != 'pytorch' or torch.cuda.is_available():
        return False
    for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        if var not in os.environ:
            raise RuntimeError(
                f'--launcher pytorch needs {var} in the environment; start '
                'the script with tools/dist_train.sh or torchrun.')
    if not dist.is_initialized():
        import datetime
        dist.init_process_group(backend='gloo', timeout=datetime.timedelta(
            seconds=dist_timeout(cfg)))
        # A gloo group still alive at interpreter exit sometimes aborts a
        # rank ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper['type'] = 'CPUCompatibleDDP'  # registered by xcit_mm
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters',
                       cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    if dist.get_rank() == 0:
        print_log(
            f'No GPU: distributed on the CPU with gloo, '
            f'{dist.get_world_size()} processes; SyncBN runs as BN.',
            logger='current')
    return True
