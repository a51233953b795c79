"""Convert a published checkpoint to the keys of this project's backbones, offline.

    python tools/convert_checkpoint.py --model efficientformer efficientformer_l1_300d.pth l1.pth
    python tools/convert_checkpoint.py --model efficientformerv2 mask_rcnn_v2_l.pth mask_rcnn_v2_l_ours.pth

Reads the authors', timm's (``.pth``/``.bin``/``.safetensors``) or mmpretrain's
checkpoints. A classification checkpoint becomes backbone weights (heads
dropped); in a detector/segmentor checkpoint only the ``backbone.`` entries are
converted and the rest is kept, so the result also serves as ``load_from``.
The converted weights must fit one architecture of the family (any bias mode),
else nothing is written and the error (exit status 2) says what does not fit.
The backbones convert on loading as well; this saves doing it every time.
"""
import argparse
import sys
from collections import OrderedDict
from collections.abc import Sequence

import torch

from plugin.models.backbones import EfficientFormer, EfficientFormerV2
from plugin.models.backbones.efficientformer import ARCH_SETTINGS as V1_ARCHS
from plugin.models.backbones.efficientformer_convert import KEY_CONVERTERS
from plugin.models.backbones.efficientformer_v2 import ARCH_SETTINGS as V2_ARCHS
from plugin.models.utils.checkpoint import (
    CheckpointMismatchError,
    StateDict,
    checkpoint_state_dict,
    load_checked,
    read_checkpoint,
    select_prefix,
)
from plugin.utils.cli import HelpFormatter, run_tool

FAMILIES = {'efficientformer': (EfficientFormer, V1_ARCHS), 'efficientformerv2': (EfficientFormerV2, V2_ARCHS)}


def backbone_class_name(model: str) -> str:
    return FAMILIES[model][0].__name__


def convert(state_dict: StateDict, model: str) -> OrderedDict:
    """Converted weights: the backbone's part of a whole-model checkpoint, or all of a backbone one."""
    convert_keys = KEY_CONVERTERS[model]
    if not any(key.startswith('backbone.') for key in state_dict):
        return convert_keys(state_dict)
    backbone = convert_keys(select_prefix(state_dict, 'backbone.'))
    converted = OrderedDict(('backbone.' + k, v) for k, v in backbone.items())
    converted.update((k, v) for k, v in state_dict.items() if not k.startswith('backbone.'))
    return converted


def fitting_architecture(backbone: StateDict, model: str, source: str) -> str:
    """The first architecture and bias mode of the family that ``backbone`` fits, or a CheckpointMismatchError
    with the nearest one's listing."""
    backbone_class, archs = FAMILIES[model]
    failures = []
    # The authors' dense tables are laid out for 800 (detection) or 512 (segmentation) pixels.
    settings = [dict(bias_mode='official_dense', dense_img_size=800), dict(bias_mode='official_dense',
                dense_img_size=512), dict(bias_mode='geometric')]
    for arch in archs:
        for setting in settings:
            candidate = backbone_class(arch=arch, **setting)
            optional = [key for key in candidate.state_dict() if key.startswith('norm')
                        or key.endswith('attention_biases_seg')]
            described = ', '.join(f'{k}={v!r}' for k, v in dict(arch=arch, **setting).items())
            try:
                load_checked(candidate, candidate.checkpoint_filter_fn(backbone), source, optional=optional)
                return described
            except CheckpointMismatchError as error:
                failures.append((error.num_differences, described, error))
    _, described, nearest = min(failures, key=lambda failure: failure[0])
    raise CheckpointMismatchError(f'the converted weights fit no {backbone_class.__name__} architecture '
                                  f'({", ".join(archs)}): check --model ({" or ".join(FAMILIES)}). Nothing '
                                  f'written. The nearest is {described}:\n{nearest}')


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--model', required=True, choices=sorted(KEY_CONVERTERS),
                        help='backbone family whose key layout to convert to')
    parser.add_argument('src', help='checkpoint file or URL')
    parser.add_argument('dst', help='output file (a dict with a "state_dict" entry)')
    args = parser.parse_args(argv)

    source = checkpoint_state_dict(read_checkpoint(args.src))
    converted = convert(source, args.model)
    backbone = select_prefix(converted, 'backbone.') if any(k.startswith('backbone.') for k in converted) \
        else converted
    arch = fitting_architecture(backbone, args.model, args.src)
    torch.save({'state_dict': converted}, args.dst)
    print(f'{args.src}: {len(source)} entries -> {args.dst}: {len(converted)} entries '
          f'({len(source) - len(converted)} dropped: heads, classification norm, index buffers); '
          f'fits {backbone_class_name(args.model)}({arch})')


if __name__ == '__main__':
    sys.exit(run_tool(main))
