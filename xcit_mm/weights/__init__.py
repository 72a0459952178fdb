"""XCiT weights: safe reading of every format (:mod:`.io`), conversion of
every key layout (:mod:`.convert`) and loading into the backbone
(:mod:`.load`)."""
from .convert import (LAYOUTS, Conversion, convert_backbone_state_dict,
                      convert_checkpoint, convert_model_state_dict,
                      detect_layout, unwrap_state_dict)
from .io import (CheckpointError, read_checkpoint, register_safe_globals,
                 save_checkpoint_atomic)
from .load import load_pretrained, summarize_keys

__all__ = [
    'LAYOUTS', 'CheckpointError', 'Conversion', 'convert_backbone_state_dict',
    'convert_checkpoint', 'convert_model_state_dict', 'detect_layout',
    'load_pretrained', 'read_checkpoint', 'register_safe_globals',
    'save_checkpoint_atomic', 'summarize_keys', 'unwrap_state_dict'
]
