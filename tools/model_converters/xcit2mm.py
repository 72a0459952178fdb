"""Convert XCiT weights to xcit_mm's layout.

    python tools/model_converters/xcit2mm.py SRC DST [--whole-model]

SRC: the authors' ImageNet checkpoint, timm's (.pth / .safetensors),
mmpretrain's, or a whole model of the authors' COCO / ADE20k release
(mmdet 2.x / mmseg 0.x). DST is written only once complete.

By default the backbone alone is written (loadable with
``init_cfg=dict(type='Pretrained', checkpoint=DST)``); ``--whole-model``
keeps neck and heads too, for ``tools/test.py``. Whole-model checkpoints are
detected and kept whole automatically.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from xcit_mm.weights import (CheckpointError, convert_backbone_state_dict,  # noqa: E402
                             convert_model_state_dict, detect_layout,
                             load_checkpoint_file, save_checkpoint_atomic,
                             summarize_keys, unwrap_state_dict)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint to convert (path or URL)')
    parser.add_argument('dst', help='where to write the converted weights')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--whole-model', action='store_true',
                      help='keep neck and heads (for tools/test.py)')
    mode.add_argument('--backbone-only', action='store_true',
                      help='keep only the backbone of a whole model')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ckpt = load_checkpoint_file(args.src)
        state_dict = unwrap_state_dict(ckpt)
        layout = detect_layout(state_dict)
        whole = args.whole_model or (
            not args.backbone_only and layout in ('authors-dense', 'xcit_mm')
            and any(not k.startswith('backbone.') for k in state_dict)
            and any(k.startswith('backbone.') for k in state_dict))
        conv = (convert_model_state_dict if whole else
                convert_backbone_state_dict)(state_dict)
    except CheckpointError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    meta = {'converted_from': osp.basename(args.src), 'layout': conv.layout,
            'whole_model': bool(whole)}
    if isinstance(ckpt, dict) and isinstance(ckpt.get('meta'), dict):
        meta.update({k: v for k, v in ckpt['meta'].items()
                     if k in ('CLASSES', 'classes', 'PALETTE', 'palette',
                              'dataset_meta')})
    save_checkpoint_atomic({'state_dict': conv.state_dict, 'meta': meta},
                           args.dst)
    print(f'{args.src}: {conv.layout} layout, '
          f'{"whole model" if whole else "backbone"}; wrote '
          f'{len(conv.state_dict)} tensors to {args.dst}; dropped: '
          f'{summarize_keys(conv.dropped)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
