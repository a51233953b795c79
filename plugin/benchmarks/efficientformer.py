"""EfficientFormer / EfficientFormerV2 backbones: MACs and latency, batch 1, against timm's
EfficientFormer at the same weights and against mmdet's ResNet-50 and Swin-T.

Our backbones run with bias_mode='geometric' and timm's weights, which at 224x224
is timm's function exactly. timm fixes the attention bias grid at construction:
its V1 only runs at 224x224; its V2 is built for each input size (then only its
bias tables differ from ours). ``speedup vs timm`` = timm ms / our ms and
``speedup vs R-50`` = ResNet-50 ms / our ms, measured in the same run, the
compared models timed in alternation (one call each, ``--repeats`` rounds, medians). In
inference both bias modes reuse the bias of the last input size, so
'official_dense' costs the same after the first call at a size. ``--fused`` adds
the latency after Conv-BN folding (``fuse()``), the deployment form.
"""
import argparse
import copy
import functools
from collections.abc import Callable

import timm
import torch
import torch.nn as nn

from ..models.backbones import EfficientFormer, EfficientFormerV2
from ..models.backbones.efficientformer_convert import convert_efficientformer_keys, convert_efficientformerv2_keys
from ..utils import alternating_latency_ms, count_macs
from ..utils.cli import image_size

ARCHS = ['l1', 'l3', 'l7', 's0', 's1', 's2', 'l']
V2_ARCHS = {'s0', 's1', 's2', 'l'}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--archs', nargs='+', choices=ARCHS, default=ARCHS,
                        help='EfficientFormer (l1, l3, l7) and V2 (s0, s1, s2, l) archs')
    parser.add_argument('--sizes', nargs='+', type=image_size, default=[(224, 224), (512, 512), (800, 1216)],
                        metavar='HxW', help='input sizes')
    parser.add_argument('--no-references', action='store_true', help='skip mmdet ResNet-50 and Swin-T')
    parser.add_argument('--fused', action='store_true', help='also time our backbones after fuse() (Conv-BN folded)')


def reference_backbones(enabled: bool) -> list[tuple[str, nn.Module]]:
    if not enabled:
        return []
    try:
        from mmdet.models.backbones import ResNet, SwinTransformer
    except ImportError as error:
        print(f'mmdet.models failed to import ({error}): no ResNet-50 / Swin-T rows')
        return []
    return [('mmdet ResNet-50', ResNet(depth=50)), ('mmdet Swin-T', SwinTransformer(drop_path_rate=0.))]


def timm_name(arch: str) -> str:
    return f'efficientformerv2_{arch}' if arch in V2_ARCHS else f'efficientformer_{arch}'


def build_ours(arch: str, timm_model: nn.Module) -> nn.Module:
    if arch in V2_ARCHS:
        model = EfficientFormerV2(arch=arch, bias_mode='geometric')
        model.load_state_dict(convert_efficientformerv2_keys(timm_model.state_dict()))
    else:
        model = EfficientFormer(arch=arch, bias_mode='geometric', out_norm_cfg=None)
        model.load_state_dict(convert_efficientformer_keys(timm_model.state_dict()))
    return model


def timm_at_size(arch: str, timm_224: nn.Module, size: tuple[int, int]) -> nn.Module | None:
    """timm's model for ``size`` with the weights of ``timm_224`` (bias tables aside), or None."""
    if size == (224, 224):
        return timm_224
    if arch not in V2_ARCHS:
        return None  # timm's V1 attention is fixed to a 7x7 grid
    model = timm.create_model(timm_name(arch), img_size=size)
    weights = {k: v for k, v in timm_224.state_dict().items() if 'attention_biases' not in k}
    model.load_state_dict(weights, strict=False)
    return model


def prepare(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], object]:
    model.to(device)
    model.eval()  # not chained: mmdet's SwinTransformer.train() returns None
    if hasattr(model, 'forward_intermediates'):
        return lambda x: model.forward_intermediates(x, intermediates_only=True)  # timm's stage outputs
    return model


def paired_latency_ms(models: list[nn.Module], x: torch.Tensor, args: argparse.Namespace) -> list[float]:
    """Median latency of each model, timed in alternation (see ``alternating_latency_ms``)."""
    runs = [prepare(model, args.device) for model in models]
    return alternating_latency_ms([functools.partial(run_model, x) for run_model in runs], args.device,
                                  args.warmup, args.repeats)


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    references = reference_backbones(not args.no_references)
    timm_models = {arch: timm.create_model(timm_name(arch)) for arch in args.archs}
    ours = {arch: build_ours(arch, timm_models[arch]) for arch in args.archs}
    fused = {arch: copy.deepcopy(model).eval().fuse() for arch, model in ours.items()} if args.fused else {}
    rows = []
    for size in args.sizes:
        x = torch.randn(1, 3, *size, device=args.device)
        input_name = f'{size[0]}x{size[1]}'
        timed = {name: model for name, model in references}
        for arch in args.archs:
            timed[('ours', arch)] = ours[arch]
            if args.fused:
                timed[('fused', arch)] = fused[arch]
            reference = timm_at_size(arch, timm_models[arch], size)
            if reference is not None:
                timed[('timm', arch)] = reference
        latency = dict(zip(timed, paired_latency_ms(list(timed.values()), x, args)))

        resnet_ms = latency[references[0][0]] if references else None
        for name, model in references:
            macs = count_macs(prepare(model, args.device), x)
            rows.append({'backbone': name, 'input': input_name, 'GMACs': macs / 1e9, 'latency ms': latency[name]})
        for arch in args.archs:
            ours_ms = latency[('ours', arch)]
            row = {'backbone': f'{type(ours[arch]).__name__}-{arch.upper()} (ours)', 'input': input_name,
                   'GMACs': count_macs(prepare(ours[arch], args.device), x) / 1e9, 'latency ms': ours_ms}
            if args.fused:
                row['fused ms'] = latency[('fused', arch)]
            if ('timm', arch) in latency:
                row['timm ms'] = latency[('timm', arch)]
                row['speedup vs timm'] = latency[('timm', arch)] / ours_ms
            if resnet_ms is not None:
                row['speedup vs R-50'] = resnet_ms / ours_ms
            rows.append(row)
    return rows
