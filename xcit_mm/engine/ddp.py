"""The model wrapper that distributed training on CPUs needs."""
import torch
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm

from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUCompatibleDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also runs on CPUs (gloo).

    mmengine's runner passes ``device_ids=[LOCAL_RANK]``, which DDP rejects
    for a CPU module, and SyncBN does not run under gloo: without a GPU this
    wrapper drops ``device_ids`` and turns SyncBN into BN. With CUDA
    available it is exactly ``MMDistributedDataParallel``.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        if not torch.cuda.is_available():
            device_ids = None
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=device_ids, **kwargs)
