"""XCiT weights: safe reading of every format (:mod:`.io`), conversion of
every key layout (:mod:`.convert`) and loud loading (:mod:`.load`)."""
from ..fileio import atomic_write
from .convert import (LAYOUTS, Conversion, convert_backbone_state_dict,
                      convert_checkpoint, convert_model_state_dict,
                      detect_layout, unwrap_state_dict)
from .io import CheckpointError, read_checkpoint, register_safe_globals
from .load import fit_problems, load_pretrained, load_trained, summarize_keys

__all__ = [
    'LAYOUTS', 'CheckpointError', 'Conversion', 'atomic_write',
    'convert_backbone_state_dict', 'convert_checkpoint',
    'convert_model_state_dict', 'detect_layout', 'fit_problems',
    'load_pretrained', 'load_trained', 'read_checkpoint',
    'register_safe_globals', 'summarize_keys', 'unwrap_state_dict'
]
