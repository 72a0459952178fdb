"""mmcv's float32-only ops under CPU bfloat16 autocast
(:func:`fp32_mmcv_ops_on_cpu`): computed in float32, RoIAlign's features
handed on in the dtype they came in (mmdet's RoI extractor writes them into
a tensor of that dtype), outside autocast untouched."""
import torch
from mmcv.ops import RoIAlign, nms

from xcit_mm.engine import fp32_mmcv_ops_on_cpu


def test_mmcv_ops_under_cpu_bf16_autocast():
    fp32_mmcv_ops_on_cpu()
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 4, 16, 16, generator=gen)
    rois = torch.tensor([[0, 1., 1., 8., 8.], [0, 2., 3., 15., 12.]])
    align = RoIAlign((3, 3), 1.0, 2)
    ref = align(feats, rois)
    assert ref.dtype == torch.float32
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = align(feats.bfloat16(), rois.bfloat16())
        dets, keep = nms(boxes.bfloat16(), scores.bfloat16(), 0.5)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    assert keep.tolist() == [0, 2]
