"""The demo's datasets (imports mmdet and mmseg: name
``xcit_mm.datasets`` in ``custom_imports`` where a config uses them)."""
from .shapes import ShapesDataset, ShapesSegDataset

__all__ = ['ShapesDataset', 'ShapesSegDataset']
