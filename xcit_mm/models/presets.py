"""The published XCiT sizes, in one table.

Every config names a preset (``arch='small-12'`` or ``arch='s12'``); the numbers
live here only. Facts from El-Nouby et al., "XCiT: Cross-Covariance Image
Transformers" (NeurIPS 2021) and the authors' dense-prediction release.
"""
from typing import Dict, Tuple

# name -> (embed_dims, depth, num_heads, layer-scale init, default out_indices)
ARCH_SETTINGS: Dict[str, dict] = {
    'nano-12': dict(embed_dims=128, depth=12, num_heads=4,
                    layer_scale_init_value=1.0, out_indices=(3, 5, 7, 11)),
    'tiny-12': dict(embed_dims=192, depth=12, num_heads=4,
                    layer_scale_init_value=1.0, out_indices=(3, 5, 7, 11)),
    'tiny-24': dict(embed_dims=192, depth=24, num_heads=4,
                    layer_scale_init_value=1e-5, out_indices=(7, 11, 15, 23)),
    'small-12': dict(embed_dims=384, depth=12, num_heads=8,
                     layer_scale_init_value=1.0, out_indices=(3, 5, 7, 11)),
    'small-24': dict(embed_dims=384, depth=24, num_heads=8,
                     layer_scale_init_value=1e-5,
                     out_indices=(7, 11, 15, 23)),
    'medium-24': dict(embed_dims=512, depth=24, num_heads=8,
                      layer_scale_init_value=1e-5,
                      out_indices=(7, 11, 15, 23)),
    'large-24': dict(embed_dims=768, depth=24, num_heads=16,
                     layer_scale_init_value=1e-5,
                     out_indices=(7, 11, 15, 23)),
}

# 's12' and 'small_12' for 'small-12', and so on
ARCH_ALIASES: Dict[str, str] = {
    alias: name for name in ARCH_SETTINGS
    for alias in (name[0] + name.split('-')[1], name.replace('-', '_'))}

CUSTOM_ARCH_KEYS: Tuple[str, ...] = ('embed_dims', 'depth', 'num_heads')


def default_out_indices(depth: int) -> Tuple[int, ...]:
    """The blocks ending the first third, half, two thirds and the whole of
    the depth, as the published presets take them; for shallow models where
    those coincide, four evenly spaced blocks."""
    if depth < 4:
        raise ValueError(
            f'An XCiT feeding a 4-level pyramid needs at least 4 blocks, got '
            f'depth={depth}.')
    picks = (depth // 3 - 1, depth // 2 - 1, 2 * depth // 3 - 1, depth - 1)
    if any(b <= a for a, b in zip(picks, picks[1:])) or picks[0] < 0:
        picks = tuple(round((i + 1) * depth / 4) - 1 for i in range(4))
    return picks


def resolve_arch(arch) -> dict:
    """Return the settings of ``arch``: a preset name, an alias or a dict.

    A dict must give ``embed_dims``, ``depth`` and ``num_heads``; it may also
    give ``layer_scale_init_value`` (default 1.0) and ``out_indices``
    (default: the blocks at 1/3, 1/2, 2/3 and the end of the depth, as the
    published presets do).

    Raises:
        ValueError: for an unknown name or an incomplete dict.
    """
    if isinstance(arch, str):
        name = ARCH_ALIASES.get(arch.lower(), arch.lower())
        if name not in ARCH_SETTINGS:
            raise ValueError(
                f'Unknown XCiT arch {arch!r}. Use one of '
                f'{sorted(ARCH_SETTINGS)} (aliases: {sorted(ARCH_ALIASES)}), '
                f'or a dict with keys {list(CUSTOM_ARCH_KEYS)}.')
        return dict(ARCH_SETTINGS[name], name=name)
    if isinstance(arch, dict):
        missing = [k for k in CUSTOM_ARCH_KEYS if k not in arch]
        unknown = set(arch) - set(CUSTOM_ARCH_KEYS) - {
            'layer_scale_init_value', 'out_indices'}
        if missing or unknown:
            raise ValueError(
                f'A custom XCiT arch dict needs keys {list(CUSTOM_ARCH_KEYS)} '
                f'(optional: layer_scale_init_value, out_indices); got '
                f'{sorted(arch)}: missing {missing}, unknown '
                f'{sorted(unknown)}.')
        settings = dict(arch)
        depth = int(settings['depth'])
        settings.setdefault('layer_scale_init_value', 1.0)
        if 'out_indices' not in settings:
            settings['out_indices'] = default_out_indices(depth)
        settings['name'] = 'custom'
        return settings
    raise ValueError(f'arch must be a preset name or a dict, got {arch!r}.')
