"""FLOPs and parameters with mmengine's ``FlopAnalyzer`` (one multiply-add
counted once; norms as mmengine counts them): the XCiT backbone, a whole
detector / segmentor from a config, or every preset beside the paper.

    # our backbone (adapter included) for a 512 x 512 input
    python tools/analysis/get_flops.py small-12 --patch-size 8 --shape 512 512

    # every preset: backbone at 224 x 224, and timm's ImageNet classifier
    # (2 class-attention layers and the head) beside the published figures
    python tools/analysis/get_flops.py --all-presets

    # a config (ours or mmdet::/mmseg::): the whole model in 'tensor' mode
    python tools/analysis/get_flops.py configs/coco/mask_rcnn_xcit_s12_p8.py \\
        --shape 800 1216

XCA's products are ``einsum`` calls, which mmengine counts; so do mmdet's
and mmseg's own ``get_flops.py``.
"""
import argparse
import os.path as osp
import sys
from functools import partial

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import subjects  # noqa: E402

# ImageNet classifiers at 224 x 224 (2 class-attention layers and the head
# included), as published: (parameters in millions, GMACs).
PUBLISHED_IMAGENET = {
    ('nano-12', 16): (3.05, 0.56), ('tiny-12', 16): (6.72, 1.24),
    ('tiny-24', 16): (12.1, 2.34), ('small-12', 16): (26.25, 4.81),
    ('small-24', 16): (47.7, 9.10), ('medium-24', 16): (84.4, 16.13),
    ('large-24', 16): (189.1, 35.86), ('nano-12', 8): (None, 2.16),
    ('tiny-12', 8): (None, 4.81), ('tiny-24', 8): (None, 9.21),
    ('small-12', 8): (None, 18.69), ('small-24', 8): (None, 35.81),
    ('medium-24', 8): (None, 63.52), ('large-24', 8): (None, 141.23),
}


def count(model: torch.nn.Module, inputs):
    """(total multiply-adds, {top-level part: multiply-adds}, parameters)."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    analyzer = FlopAnalyzer(model.eval(), inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analyzer.total()
    parts = {k: v for k, v in analyzer.by_module().items()
             if k and '.' not in k}
    return total, parts, parameter_count(model)['']


def backbone_report(arch, patch_size, shape):
    model = subjects.backbone(arch, patch_size)
    total, parts, params = count(model, (torch.zeros(1, 3, *shape), ))
    print(f'XCiT {model.arch} patch {patch_size}, input {shape[0]}x'
          f'{shape[1]}: {params / 1e6:.2f} M parameters, '
          f'{total / 1e9:.3f} GMACs')
    for name, macs in parts.items():
        print(f'  {name}: {macs / 1e9:.3f} GMACs')
    return total, parts, params


def config_report(path, shape):
    cfg = subjects.load_model_config(path)
    model = subjects.build_model(cfg).eval()
    inputs, samples = subjects.make_batch(model, cfg.default_scope, 1,
                                          *shape, with_targets=False)
    data = model.data_preprocessor(dict(inputs=[inputs[0]],
                                        data_samples=samples))
    # as mmdet's get_flops.py: the model's tensor-mode forward
    model.forward = partial(model._forward,
                            **{'batch_data_samples' if cfg.default_scope ==
                               'mmdet' else 'data_samples':
                               data['data_samples']})
    total, parts, params = count(model, (data['inputs'], ))
    print(f'{path}, input {shape[0]}x{shape[1]} (mode "tensor"): '
          f'{params / 1e6:.2f} M parameters, {total / 1e9:.3f} GMACs')
    for name, macs in parts.items():
        print(f'  {name}: {macs / 1e9:.3f} GMACs')
    return total, parts, params


def imagenet_count(arch, patch_size):
    import timm
    name = f"xcit_{arch.replace('-', '_')}_p{patch_size}_224"
    model = timm.create_model(name, pretrained=False)
    for m in model.modules():  # count the class attention's products
        if hasattr(m, 'fused_attn'):
            m.fused_attn = False
    total, _, params = count(model, (torch.zeros(1, 3, 224, 224), ))
    return total, params


def all_presets_report(shape):
    from xcit_mm.models import ARCH_SETTINGS
    print('| preset | patch | backbone params (M) | backbone GMACs '
          '| of which adapter | ImageNet params (M) | ImageNet GMACs '
          '| published params (M) | published GMACs | diff params '
          '| diff GMACs |')
    print('| --- ' * 11 + '|')
    rows = []
    for arch in ARCH_SETTINGS:
        for p in (16, 8):
            model = subjects.backbone(arch, p)
            total, parts, params = count(model, (torch.zeros(1, 3, *shape), ))
            im_total, im_params = imagenet_count(arch, p)
            pub_params, pub_gmacs = PUBLISHED_IMAGENET[(arch, p)]

            def diff(ours, published):
                return '-' if published is None else \
                    f'{100 * (ours / published - 1):+.2f}%'

            print(f'| {arch} | {p} | {params / 1e6:.2f} | {total / 1e9:.2f} '
                  f"| {parts.get('adapter', 0) / 1e9:.2f} "
                  f'| {im_params / 1e6:.2f} | {im_total / 1e9:.2f} '
                  f"| {pub_params or '-'} | {pub_gmacs} "
                  f'| {diff(im_params / 1e6, pub_params)} '
                  f'| {diff(im_total / 1e9, pub_gmacs)} |')
            rows.append((arch, p, total, params, im_total, im_params))
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', nargs='?',
                        help="a preset ('small-12', 's12', ...) or a config")
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (one value: square); default 224 '
                        'for presets, 512 for configs')
    parser.add_argument('--patch-size', type=int, default=16,
                        choices=[8, 16])
    parser.add_argument('--all-presets', action='store_true')
    args = parser.parse_args(argv)
    if args.target is None and not args.all_presets:
        parser.error('give a preset or a config, or --all-presets')
    if args.shape is not None:
        args.shape = args.shape * 2 if len(args.shape) == 1 else args.shape
        if len(args.shape) != 2 or min(args.shape) <= 0:
            parser.error('--shape takes H W (or one value)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.all_presets:
        return all_presets_report(args.shape or (224, 224))
    if args.target.endswith('.py') or '::' in args.target:
        return config_report(args.target, args.shape or (512, 512))
    return backbone_report(args.target, args.patch_size,
                           args.shape or (224, 224))


if __name__ == '__main__':
    main()
