"""The model wrapper that distributed training on CPUs needs."""
import torch
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm

from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUCompatibleDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also runs on CPUs (gloo): without
    a GPU, no ``device_ids`` (DDP rejects them there) and BN for SyncBN."""

    def __init__(self, module, device_ids=None, **kwargs):
        if not torch.cuda.is_available():
            device_ids, module = None, revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=device_ids, **kwargs)
