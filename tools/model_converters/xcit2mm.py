"""Convert XCiT weights to xcit_mm's layout.

    python tools/model_converters/xcit2mm.py SRC DST [--whole-model | --backbone-only]

SRC (a path or URL): the authors' ImageNet checkpoint, timm's (.pth /
.safetensors), mmpretrain's, PaddlePaddle PASSL's (.pdparams), MindSpore
MindCV's (.ckpt), or a whole model of the authors' COCO / ADE20k release
(mmdet 2.x / mmseg 0.x). DST is written only once complete.

A whole detector or segmentor stays whole (for tools/test.py); anything else
becomes a backbone file, loadable with
``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
"""
import argparse
import io
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from xcit_mm.weights import (CheckpointError, atomic_write,  # noqa: E402
                             convert_checkpoint, read_checkpoint,
                             summarize_keys)
from xcit_mm.weights.convert import switches_needed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint to convert (path or URL)')
    parser.add_argument('dst', help='where to write the converted weights')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--whole-model', action='store_const', const=True,
                      dest='whole', help='keep neck and heads')
    mode.add_argument('--backbone-only', action='store_const', const=False,
                      dest='whole', help='keep only the backbone')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ckpt = read_checkpoint(args.src)
        conv = convert_checkpoint(ckpt, whole_model=args.whole)
    except CheckpointError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    whole = any(not k.startswith('backbone.') for k in conv.state_dict) and \
        any(k.startswith('backbone.') for k in conv.state_dict)
    meta = dict(converted_from=osp.basename(args.src), layout=conv.layout,
                whole_model=whole, requires=dict(conv.requires))
    if isinstance(ckpt.get('meta'), dict):
        meta.update({k: v for k, v in ckpt['meta'].items()
                     if k in ('CLASSES', 'classes', 'PALETTE', 'palette',
                              'dataset_meta')})
    try:
        buffer = io.BytesIO()  # a full disk then fails in a plain write
        torch.save({'state_dict': conv.state_dict, 'meta': meta}, buffer)
        atomic_write(args.dst, buffer.getvalue())
    except OSError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{args.src}: {conv.layout} layout, '
          f'{"whole model" if whole else "backbone"}; wrote '
          f'{len(conv.state_dict)} tensors to {args.dst}; dropped: '
          f'{summarize_keys(conv.dropped)}')
    needed = switches_needed(conv.requires)
    if needed:
        switches = ', '.join(f'{k}={v!r}' for k, v in needed.items())
        print(f'note: these weights need the backbone built with {switches}')
    elif conv.requires:
        print('maths: the published one, the backbone\'s defaults (no '
              'switch needed)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
