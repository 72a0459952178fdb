"""xcit_mm: the XCiT backbone for OpenMMLab (mmdet 3, mmsegmentation 1).

Importing the package does three things and nothing else:

- registers its modules in mmengine's root registries (visible from mmdet
  and mmseg configs): the ``XCiT`` backbone, the runtime hooks, the
  CPU-capable optimizer and DDP wrappers;
- adds the few globals that XCiT and mmengine checkpoints pickle to torch's
  weights-only allow-list (see :func:`xcit_mm.weights.register_safe_globals`),
  so that mmengine can resume from and test its own checkpoints and plain
  ``torch.load(path, weights_only=True)`` reads them;
- registers the ``'xcit_atomic_local'`` file backend (:mod:`xcit_mm.fileio`).

It imports neither mmdet nor mmseg; the demo's datasets are in
``xcit_mm.datasets``, imported by the configs that use them.
"""
from . import engine  # noqa: F401  (registers the runtime pieces)
from .models import ARCH_SETTINGS, XCiT, XCiTPyramidAdapter
from .version import __version__
from .weights import (CheckpointError, convert_checkpoint, load_pretrained,
                      load_trained, read_checkpoint, register_safe_globals)

register_safe_globals()

__all__ = [
    '__version__', 'XCiT', 'XCiTPyramidAdapter', 'ARCH_SETTINGS',
    'CheckpointError', 'convert_checkpoint', 'load_pretrained',
    'load_trained', 'read_checkpoint'
]
