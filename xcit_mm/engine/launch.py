"""Distributed launch on machines without a GPU.

On GPUs mmengine's own launcher is used unchanged. Without one, mmengine
0.10's ``pytorch`` launcher calls ``torch.cuda.set_device`` and its runner
passes ``device_ids=[LOCAL_RANK]`` to DDP, both of which fail; and SyncBN
does not run under gloo. :func:`init_cpu_distributed` starts the gloo process
group before the runner (which then skips its own ``init_dist``), and
:class:`CPUCompatibleDDP` wraps the model without ``device_ids`` and with
plain batch norms.
"""
import atexit
import gc
import os
import sys

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.model.utils import revert_sync_batchnorm

from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUCompatibleDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also runs on CPUs (gloo).

    With CUDA available it is exactly ``MMDistributedDataParallel``.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        if not torch.cuda.is_available():
            device_ids = None
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=device_ids, **kwargs)


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
        dist.init_process_group(backend='gloo')
        # A gloo group still alive at interpreter exit sometimes aborts a
        # rank ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper['type'] = 'CPUCompatibleDDP'
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
