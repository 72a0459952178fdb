"""Latency of exported models in ONNX Runtime against eager PyTorch (CPU, fp32).

    python tools/deployment/benchmark_onnx.py backbone detector segmentor \\
        --threads 2 --rounds 3

Subjects, random weights (latency does not depend on them):

- ``backbone``: XCiT-S12/16 (BN) at 800x1344, the four pyramid maps;
- ``detector``: the T12/16 Mask R-CNN (configs/coco/mask_rcnn_xcit_t12_p16.py)
  at 800x1344, its classifier biases raised so that every image yields
  ``max_per_img`` (100) detections, as a trained model does on a busy image;
  eager is mmdet's ``predict(rescale=False)`` (what tools/test.py runs, mask
  pasting included) and the exportable module run eagerly (no pasting, the
  ONNX graph's own work);
- ``segmentor``: the T12/16 UperNet (configs/ade20k/upernet_xcit_t12_p16_160k.py)
  at 512x683 (its test pipeline: short side 512; a 4:3 ADE20k image), eager
  ``encode_decode``.

Each model is exported by tools/deployment/export_onnx.py (dynamic sizes)
and run by ONNX Runtime's CPU provider with ``--threads`` intra-op threads at
each ``--ort-level`` of graph optimisation. Cases run in interleaved rounds
and the ratio is the median of per-round ratios (tools/analysis/benchmark.py's
``run_rounds``, whose machine header is printed first). ``--show-ops`` prints
the operators of the graph ONNX Runtime runs after its optimisations (what it
fused).
"""
import argparse
import collections
import os
import os.path as osp
import statistics
import sys
import tempfile
from typing import Callable, Dict

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                            'analysis'))

import benchmark  # noqa: E402  (tools/analysis/benchmark.py)
import export_onnx  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SUBJECTS = {
    'backbone': (None, (800, 1344)),
    'detector': ('configs/coco/mask_rcnn_xcit_t12_p16.py', (800, 1344)),
    'segmentor': ('configs/ade20k/upernet_xcit_t12_p16_160k.py', (512, 683)),
}
LEVELS = ('basic', 'extended', 'all')


def build(subject: str):
    """(cfg or None, model) with random weights, eval mode."""
    torch.manual_seed(0)
    config, _ = SUBJECTS[subject]
    if config is None:
        import subjects
        model = torch.nn.Module()
        model.backbone = subjects.backbone('small-12', 16).eval()
        return None, model.eval()
    cfg = export_onnx.load_config(osp.join(REPO, config))
    cfg.model.backbone.init_cfg = None  # no download of pretrained weights
    model = export_onnx.build_model(cfg)
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # init_weights reports every tensor
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    if subject == 'detector':
        with torch.no_grad():
            model.rpn_head.rpn_cls.bias.add_(2.0)
            bias = model.roi_head.bbox_head.fc_cls.bias
            bias[:4] += 3.0  # a few classes above score_thr, not background
            bias[-1] -= 4.0
    return cfg, model.eval()


def session(data: bytes, level: str, threads: int, ops_file=None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle ONNX Runtime threads would spin through the next eager case
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if ops_file:
        opts.optimized_model_filepath = ops_file
    return ort.InferenceSession(
        data, opts, providers=['CPUExecutionProvider'])


def op_counts(path: str) -> collections.Counter:
    import onnx
    graph = onnx.load(path).graph
    return collections.Counter(node.op_type for node in graph.node)


def cases(subject: str, levels, threads: int, show_ops: bool,
          shape=None) -> Dict[str, Callable]:
    import detector as det
    _, model = build(subject)
    h, w = shape or SUBJECTS[subject][1]
    img = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    data = export_onnx.export_bytes(model, subject, (h, w), 1, 17, True,
                                    True)
    model.eval()
    found = {}
    if subject == 'backbone':
        found['eager'] = lambda: model.backbone(img)
    elif subject == 'segmentor':
        found['eager'] = lambda: model.encode_decode(
            img, [dict(img_shape=(h, w))])
    else:
        from mmdet.structures import DetDataSample
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                    batch_input_shape=(h, w), scale_factor=(1.0, 1.0))
        wrapper = det.DetectorExport(model).eval()
        found['eager (mmdet predict)'] = lambda: model.predict(
            img, [DetDataSample(metainfo=meta)], rescale=False)
        found['eager (export module)'] = lambda: wrapper(img)
    feed = {'input': img.numpy()}
    for level in levels:
        ops_file = None
        if show_ops:
            ops_file = osp.join(tempfile.mkdtemp(), f'{subject}_{level}.onnx')
        sess = session(data, level, threads, ops_file)
        found[f'onnxruntime ({level})'] = (
            lambda s=sess: s.run(None, feed))
        if show_ops:
            counts = op_counts(ops_file)
            print(f'{subject}, ONNX Runtime {level}: ' + ', '.join(
                f'{op} {n}' for op, n in counts.most_common()))
    if subject == 'detector':
        dets = found[f'onnxruntime ({levels[0]})']()[0]
        print(f'detector: {int((dets[..., 4] > 0).sum())} detections')
    return found


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('subjects', nargs='*', metavar='SUBJECT',
                        help=f'of {", ".join(SUBJECTS)} (default: all)')
    parser.add_argument('--threads', type=int, default=None,
                        help='intra-op threads of PyTorch and ONNX Runtime '
                        '(default: PyTorch\'s)')
    parser.add_argument('--ort-level', nargs='+', default=['all'],
                        choices=LEVELS, help='graph optimisation levels')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--min-run-time', type=float, default=0.0,
                        help='seconds per timing (default: one run)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='another input size for every subject')
    parser.add_argument('--show-ops', action='store_true',
                        help='print the operators after optimisation')
    args = parser.parse_args(argv)
    unknown = set(args.subjects) - set(SUBJECTS)
    if unknown:
        parser.error(f'unknown subject {sorted(unknown)[0]!r}; choose from '
                     f'{", ".join(SUBJECTS)}')
    args.subjects = args.subjects or list(SUBJECTS)
    return args


def main(argv=None):
    import onnxruntime as ort
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    header = benchmark.machine_header('fp32')
    header['onnxruntime'] = f'{ort.__version__} (CPUExecutionProvider, ' \
        f'{threads} intra-op threads, sequential)'
    header['load average (1, 5, 15 min)'] = ' '.join(
        f'{x:.1f}' for x in os.getloadavg())
    for key, value in header.items():
        print(f'{key}: {value}')
    rows = []
    for subject in args.subjects:
        found = cases(subject, args.ort_level, threads, args.show_ops,
                      args.shape)
        with torch.no_grad():
            times = benchmark.run_rounds(found, args.rounds,
                                         args.min_run_time)
        base = next(iter(found))
        for name, values in times.items():
            ratios = [a / b for a, b in zip(values, times[base])]
            rows.append((subject, name, statistics.median(values) * 1e3,
                         statistics.median(ratios)))
        del found
    print(f'\nload average after: '
          f'{" ".join(f"{x:.1f}" for x in os.getloadavg())}')
    print('\n| model | runtime | median ms | vs first row |')
    print('|---|---|---|---|')
    for subject, name, ms, ratio in rows:
        print(f'| {subject} | {name} | {ms:.0f} | {ratio:.2f}x |')


if __name__ == '__main__':
    main()
