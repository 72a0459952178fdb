"""The demo's datasets (imports mmdet and mmseg: name
``xcit_mm.datasets`` in ``custom_imports`` where a config uses them)."""
# torchvision is imported here, before any model runs, for the demo
# detector's RoIAlign (``use_torchvision=True``, faster on CPUs than mmcv's):
# mmcv imports torchvision lazily inside RoIAlign.forward, and that first
# import, when made while a model is being traced (mmdet's get_flops.py,
# mmengine's FlopAnalyzer), fails on ``torch.ops.torchvision._cuda_version``
# ("unsupported output type: int").
try:
    import torchvision  # noqa: F401
except ImportError:  # only the demo detector needs it
    pass

from .shapes import ShapesDataset, ShapesSegDataset

__all__ = ['ShapesDataset', 'ShapesSegDataset']
