"""The demo's datasets (imports mmdet and mmseg: name
``xcit_mm.datasets`` in ``custom_imports`` where a config uses them)."""
# torchvision first, for the demo detector's RoIAlign (use_torchvision):
# mmcv imports it lazily in RoIAlign.forward, which fails while a model is
# traced (FlopAnalyzer: torch.ops.torchvision._cuda_version).
try:
    import torchvision  # noqa: F401
except ImportError:  # only the demo detector needs it
    pass

from .shapes import ShapesDataset, ShapesSegDataset

__all__ = ['ShapesDataset', 'ShapesSegDataset']
