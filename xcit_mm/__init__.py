"""xcit_mm: the XCiT backbone for OpenMMLab (mmdet 3, mmsegmentation 1).

Importing the package registers ``XCiT`` in mmengine's root model registry
(visible from mmdet and mmseg configs) and allows the few extra globals that
XCiT and mmengine checkpoints pickle in torch's weights-only loader.
"""
from .engine import CPUCompatibleDDP
from .models import ARCH_SETTINGS, XCiT, XCiTPyramidAdapter
from .version import __version__
from .weights import (convert_backbone_state_dict, convert_model_state_dict,
                      load_checkpoint_file, load_pretrained,
                      register_safe_globals)

register_safe_globals()

__all__ = [
    '__version__', 'XCiT', 'CPUCompatibleDDP', 'XCiTPyramidAdapter', 'ARCH_SETTINGS',
    'convert_backbone_state_dict', 'convert_model_state_dict',
    'load_checkpoint_file', 'load_pretrained'
]
