from .adapter import XCiTPyramidAdapter
from .presets import ARCH_SETTINGS, resolve_arch
from .xcit import XCiT

__all__ = ['XCiT', 'XCiTPyramidAdapter', 'ARCH_SETTINGS', 'resolve_arch']
