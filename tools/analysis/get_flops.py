"""FLOPs (multiply-adds, one counted once, as mmengine counts) and
parameters of the XCiT backbone, of a whole model, or of the ImageNet
classification XCiT.

Examples::

    # our backbone (adapter included) for a 512 x 512 input
    python tools/analysis/get_flops.py small-12 --patch-size 8 --shape 512 512

    # the ImageNet model as in the paper's table (2 class-attention layers
    # and the head included), next to the published figures
    python tools/analysis/get_flops.py small-12 --imagenet

    # every preset: backbone at --shape and ImageNet model at 224 x 224
    python tools/analysis/get_flops.py --all-presets

    # a config: its backbone and the whole detector / segmentor
    python tools/analysis/get_flops.py configs/coco/mask_rcnn_xcit_s12_p8.py \\
        --shape 800 1216

Attention modules are counted from their maths (XCA: ``qkv``, the two
``d_h x d_h`` products per head, ``proj``), whatever kernels run them; see
``xcit_mm/analysis/flops.py`` for the conventions.
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', nargs='?', default=None,
                        help="a preset ('small-12', 's12', ...) or an "
                        'mmdet/mmseg config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (one value: square); default '
                        '224 224 for presets and --imagenet, 512 512 for '
                        'configs')
    parser.add_argument('--patch-size', type=int, default=16,
                        choices=[8, 16], help='with a preset (default 16)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--imagenet', action='store_true',
                        help="count timm's ImageNet classification XCiT of "
                        'the preset (trunk, 2 class-attention layers, head)')
    parser.add_argument('--all-presets', action='store_true',
                        help='a table for every preset and patch size')
    parser.add_argument('--presets', nargs='+', default=None,
                        help='with --all-presets: only these presets')
    parser.add_argument('--patch-sizes', type=int, nargs='+',
                        default=[16, 8], choices=[8, 16],
                        help='with --all-presets (default 16 8)')
    parser.add_argument('--by-module', action='store_true',
                        help='also print the count of each top-level part')
    parser.add_argument('--json', default=None,
                        help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    if args.target is None and not args.all_presets:
        parser.error('give a preset or a config, or --all-presets')
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = args.shape * 2
        if len(args.shape) != 2 or min(args.shape) <= 0:
            parser.error('--shape takes H W (or one value)')
    return args


def _g(value: float) -> str:
    return f'{value / 1e9:.3f}'


def _m(value: float) -> str:
    return f'{value / 1e6:.2f}'


def _fmt_opt(value, spec):
    return '-' if value is None else format(value, spec)


def print_parts(count, prefix=''):
    for name, value in count.children(prefix).items():
        print(f'    {name:<28} {_g(value):>10} GMACs')


def preset_report(args):
    from xcit_mm.analysis.flops import (PUBLISHED_IMAGENET, backbone_flops,
                                        block_macs, imagenet_flops,
                                        timm_model_name)
    from xcit_mm.models.presets import resolve_arch
    settings = resolve_arch(args.target)
    arch, p = settings['name'], args.patch_size
    shape = args.shape or [224, 224]
    out = dict(target=arch, patch_size=p, shape=shape,
               batch_size=args.batch_size)
    if args.imagenet:
        count = imagenet_flops(arch, p, shape)
        pub_params, pub_gmacs = PUBLISHED_IMAGENET.get((arch, p),
                                                       (None, None))
        print(f'ImageNet model {timm_model_name(arch, p)} (timm, random '
              f'weights), input 1x3x{shape[0]}x{shape[1]}:')
        print(f'  params {_m(count.params)} M   GMACs {_g(count.total)}')
        if pub_gmacs is not None and list(shape) == [224, 224]:
            line = f'  published: GMACs {pub_gmacs}'
            line += f' ({100 * (count.total / 1e9 / pub_gmacs - 1):+.2f}%)'
            if pub_params is not None:
                line += (f', params {pub_params} M ('
                         f'{100 * (count.params / 1e6 / pub_params - 1):+.2f}'
                         '%)')
            print(line)
        if args.by_module:
            print_parts(count)
        out.update(imagenet_params=count.params, imagenet_macs=count.total,
                   published_params_m=pub_params,
                   published_gmacs=pub_gmacs,
                   parts=dict(count.children()))
        return out
    count = backbone_flops(arch, p, shape, batch_size=args.batch_size)
    trunk = sum(count.of(k) for k in ('patch_embed', 'pos_embed', 'blocks'))
    grid = (-(-shape[0] // p), -(-shape[1] // p))
    n = grid[0] * grid[1]
    d, h = settings['embed_dims'], settings['num_heads']
    print(f'XCiT backbone {arch}, patch {p}: input '
          f'{args.batch_size}x3x{shape[0]}x{shape[1]}, {grid[0]}x{grid[1]} '
          f'= {n} tokens')
    print(f'  params {_m(count.params)} M   GMACs {_g(count.total)} '
          f'(trunk {_g(trunk)}, adapter {_g(count.of("adapter"))})')
    per_block = count.of('blocks.0') / args.batch_size
    formula = block_macs(n, d, h)
    print(f'  one block: {per_block / 1e6:.2f} MMACs = published '
          f'12Nd^2 + 2Nd^2/h + 18Nd ({formula / 1e6:.2f}) + norms '
          f'({(per_block - formula) / 1e6:.2f})')
    if args.by_module:
        print_parts(count)
    out.update(params=count.params, macs=count.total, trunk_macs=trunk,
               adapter_macs=count.of('adapter'), tokens=n,
               block_macs=per_block, parts=dict(count.children()))
    return out


def config_report(args):
    from xcit_mm.analysis.flops import count_flops
    from xcit_mm.analysis.full_model import (build_from_config,
                                             load_model_config, make_batch)
    cfg = load_model_config(args.target)
    shape = args.shape or [512, 512]
    out = dict(target=args.target, shape=shape, batch_size=args.batch_size)
    backbone = build_from_config(cfg, 'backbone').eval()
    x = torch.zeros(args.batch_size, 3, *shape)
    bb = count_flops(backbone, lambda: backbone(x))
    print(f'{args.target}: input {args.batch_size}x3x{shape[0]}x{shape[1]}')
    print(f'  backbone: params {_m(bb.params)} M   GMACs {_g(bb.total)}')
    model = build_from_config(cfg, 'model').eval()
    batch = make_batch(model, cfg.default_scope, args.batch_size, *shape,
                       'cpu', with_targets=False)
    full = count_flops(
        model,
        lambda: model(batch.inputs, batch.data_samples, mode='tensor'))
    print(f'  whole model (mode="tensor"): params {_m(full.params)} M   '
          f'GMACs {_g(full.total)}')
    print_parts(full)
    out.update(backbone_params=bb.params, backbone_macs=bb.total,
               model_params=full.params, model_macs=full.total,
               parts=dict(full.children()))
    return out


def all_presets_report(args):
    from xcit_mm.analysis.flops import preset_table
    shape = args.shape or [224, 224]
    from xcit_mm.models.presets import resolve_arch
    presets = None if args.presets is None else [
        resolve_arch(p)['name'] for p in args.presets
    ]
    rows = preset_table(shape=shape, presets=presets,
                        patch_sizes=args.patch_sizes)
    print(f'Backbone: ours (adapter included) at {shape[0]}x{shape[1]}; '
          'ImageNet model: timm classification XCiT (2 class-attention '
          'layers + head) at 224x224; published: the paper (params for '
          'patch 16 only).\n')
    print('| preset | patch | backbone params (M) | backbone GMACs '
          '| of which adapter | ImageNet params (M) | ImageNet GMACs '
          '| published params (M) | published GMACs | diff params | '
          'diff GMACs |')
    print('| --- ' * 11 + '|')
    for r in rows:
        print(f"| {r['arch']} | {r['patch_size']} "
              f"| {r['backbone_params_m']:.2f} | {r['backbone_gmacs']:.2f} "
              f"| {r['adapter_gmacs']:.2f} "
              f"| {r['imagenet_params_m']:.2f} | {r['imagenet_gmacs']:.2f} "
              f"| {_fmt_opt(r['published_params_m'], 'g')} "
              f"| {_fmt_opt(r['published_gmacs'], 'g')} "
              f"| {_fmt_opt(r['params_diff_pct'], '+.2f')}% "
              f"| {_fmt_opt(r['gmacs_diff_pct'], '+.2f')}% |".replace(
                  '| -% ', '| - '))
    return dict(shape=shape, rows=rows)


def main(argv=None):
    args = parse_args(argv)
    import xcit_mm  # noqa: F401
    if args.all_presets:
        out = all_presets_report(args)
    elif args.target.endswith('.py') or osp.isfile(args.target):
        out = config_report(args)
    else:
        out = preset_report(args)
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=2)
        print(f'wrote {args.json}')
    return out


if __name__ == '__main__':
    main()
