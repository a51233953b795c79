"""Convert a published checkpoint to the keys of this project's backbones, offline.

    python tools/convert_checkpoint.py --model efficientformer efficientformer_l1_300d.pth l1.pth
    python tools/convert_checkpoint.py --model efficientformerv2 mask_rcnn_v2_l.pth mask_rcnn_v2_l_ours.pth

Reads the authors', timm's (``.pth``/``.bin``/``.safetensors``) or mmpretrain's
checkpoints. A classification checkpoint becomes backbone weights (heads
dropped); in a detector/segmentor checkpoint only the ``backbone.`` entries are
converted and the rest is kept, so the result also serves as ``load_from``.
The backbones convert on loading as well; this saves doing it every time.
"""
import argparse
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugin.models.backbones.efficientformer_convert import (KEY_CONVERTERS, checkpoint_state_dict,  # noqa: E402
                                                             load_checkpoint_file)


def convert(state_dict: dict, model: str) -> OrderedDict:
    """Converted weights: the backbone's part of a whole-model checkpoint, or all of a backbone one."""
    convert_keys = KEY_CONVERTERS[model]
    state_dict = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                             for k, v in state_dict.items())
    if not any(key.startswith('backbone.') for key in state_dict):
        return convert_keys(state_dict)
    backbone = convert_keys(OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items()
                                        if k.startswith('backbone.')))
    converted = OrderedDict(('backbone.' + k, v) for k, v in backbone.items())
    converted.update((k, v) for k, v in state_dict.items() if not k.startswith('backbone.'))
    return converted


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, choices=sorted(KEY_CONVERTERS),
                        help='backbone family whose key layout to convert to')
    parser.add_argument('src', help='checkpoint file or URL')
    parser.add_argument('dst', help='output file (a dict with a "state_dict" entry)')
    args = parser.parse_args(argv)

    source = checkpoint_state_dict(load_checkpoint_file(args.src))
    converted = convert(source, args.model)
    torch.save({'state_dict': converted}, args.dst)
    print(f'{args.src}: {len(source)} entries -> {args.dst}: {len(converted)} entries '
          f'({len(source) - len(converted)} dropped: heads, classification norm, index buffers)')


if __name__ == '__main__':
    main()
