"""mmcv's CPU kernels under CPU autocast.

mmcv's CPU kernels of NMS and RoIAlign take float32 only; under
``torch.autocast('cpu', dtype=torch.bfloat16)`` the features and scores that
reach them are bfloat16 and they fail ("expected scalar type Float but found
BFloat16"). :func:`fp32_mmcv_ops_on_cpu` makes them run in float32 while CPU
autocast is on (RoIAlign's output is cast back to the input's dtype), and
changes nothing otherwise. Called by ``AutoAmpOptimWrapper`` when it trains in
bf16 and by ``tools/test.py`` / ``tools/infer.py`` with ``--amp`` on a CPU.
"""
import functools

import torch

_DONE = False


def _cpu_autocast(t: torch.Tensor) -> bool:
    return t.device.type == 'cpu' and torch.is_autocast_enabled('cpu')


def fp32_mmcv_ops_on_cpu():
    """Idempotent; see the module docstring."""
    global _DONE
    if _DONE:
        return
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlign

    nms_forward = NMSop.forward

    @functools.wraps(nms_forward)
    def nms(ctx, bboxes, scores, *args):
        if _cpu_autocast(bboxes):
            bboxes, scores = bboxes.float(), scores.float()
        return nms_forward(ctx, bboxes, scores, *args)

    roi_forward = RoIAlign.forward

    @functools.wraps(roi_forward)
    def roi_align(self, input, rois):
        if _cpu_autocast(input):
            with torch.autocast('cpu', enabled=False):
                return roi_forward(self, input.float(),
                                   rois.float()).to(input.dtype)
        return roi_forward(self, input, rois)

    NMSop.forward = staticmethod(nms)
    RoIAlign.forward = roi_align
    _DONE = True
