"""Analysis tools: FLOP and parameter counts, timing and memory benchmarks,
and the reference models (timm's XCiT trunk at equal weights, a
global-attention ViT of equal size) they are compared with.

Used by ``tools/analysis/get_flops.py`` and ``tools/analysis/benchmark.py``.
"""
from .flops import (PUBLISHED_IMAGENET, FlopCount, backbone_flops,
                    block_macs, count_flops, count_parameters,
                    imagenet_flops, preset_table, timm_model_name,
                    vit_block_macs)

__all__ = [
    'PUBLISHED_IMAGENET', 'FlopCount', 'backbone_flops', 'block_macs',
    'count_flops', 'count_parameters', 'imagenet_flops', 'preset_table',
    'timm_model_name', 'vit_block_macs'
]
