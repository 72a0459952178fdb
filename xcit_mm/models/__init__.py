from .adapter import XCiTPyramidAdapter
from .presets import ARCH_ALIASES, ARCH_SETTINGS, resolve_arch
from .xcit import XCA, LPI, XCABlock, XCiT, xca_reference

__all__ = [
    'XCiT', 'XCiTPyramidAdapter', 'XCA', 'LPI', 'XCABlock', 'xca_reference',
    'ARCH_SETTINGS', 'ARCH_ALIASES', 'resolve_arch'
]
