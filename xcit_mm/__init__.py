"""xcit_mm: the XCiT backbone for OpenMMLab (mmdet 3, mmsegmentation 1).

Importing it registers its modules in mmengine's root registries (seen from
mmdet and mmseg configs), the ``'xcit_atomic_local'`` file backend
(:mod:`xcit_mm.fileio`), and adds the globals of XCiT and mmengine
checkpoints to torch's weights-only allow-list
(:func:`xcit_mm.weights.register_safe_globals`), so that mmengine resumes
from and tests its own checkpoints; nothing else. The demo's datasets are in
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
