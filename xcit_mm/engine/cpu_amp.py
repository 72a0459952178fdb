"""mmcv's CPU NMS and RoIAlign take float32 only; under CPU bf16 autocast
their inputs are bfloat16 ("expected scalar type Float"). Used by
``AutoAmpOptimWrapper`` in bf16 and by the tools' ``--amp`` on a CPU."""
import functools

import torch


def _cpu_autocast(t: torch.Tensor) -> bool:
    return t.device.type == 'cpu' and torch.is_autocast_enabled('cpu')


@functools.lru_cache(maxsize=None)
def fp32_mmcv_ops_on_cpu():
    """Makes mmcv's NMS and RoIAlign run in float32 while CPU autocast is
    on (RoIAlign's output cast back); nothing changes otherwise. Idempotent.
    """
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlign
    nms_forward, roi_forward = NMSop.forward, RoIAlign.forward

    def nms(ctx, bboxes, scores, *args):
        if _cpu_autocast(bboxes):
            bboxes, scores = bboxes.float(), scores.float()
        return nms_forward(ctx, bboxes, scores, *args)

    def roi_align(self, input, rois):
        if not _cpu_autocast(input):
            return roi_forward(self, input, rois)
        with torch.autocast('cpu', enabled=False):
            return roi_forward(self, input.float(), rois.float()).to(input.dtype)

    NMSop.forward = staticmethod(nms)
    RoIAlign.forward = roi_align
