"""Registration in mmengine's root registries.

mmdet's and mmseg's registries are children of mmengine's root ones and look
a name up in their parents, so a module registered here builds under
``default_scope='mmdet'`` and ``default_scope='mmseg'`` alike, without
importing either library.
"""
from mmengine.registry import HOOKS, MODEL_WRAPPERS, MODELS, OPTIM_WRAPPERS

__all__ = ['HOOKS', 'MODELS', 'MODEL_WRAPPERS', 'OPTIM_WRAPPERS']
