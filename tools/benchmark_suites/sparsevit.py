"""SparseViT-Swin against dense Swin: backbone MACs, latency, speedup and its efficiency.

The dense reference is mmdet's ``SwinTransformer`` when mmdet is installed, else
our backbone at ratio 0. ``eff`` = measured speedup / MACs ratio (1.0 is the
limit that the MACs promise). Modes: ``eager``; ``graph`` replays a captured CUDA
graph (GPU only); ``compile`` runs ``torch.compile(fullgraph=True)``.
"""
import argparse
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from plugin.models.backbones import SparseViTSwin
from plugin.utils import capture_cuda_graph, count_macs, median_latency_ms

PAPER_CONFIGS = {
    'paper cfg1': [[0.3, 0.3], [0., 0.], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0., 0.]],
    'paper cfg2': [[0.6, 0.6], [0., 0.], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0., 0.]],
    'paper cfg3': [[0.7, 0.7], [0., 0.], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0., 0.]],
}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--size', type=int, nargs=2, default=(672, 672), metavar=('H', 'W'))
    parser.add_argument('--batches', type=int, nargs='+', default=None,
                        help='batch sizes (default: 1 4 on CPU, 1 4 16 on GPU)')
    parser.add_argument('--dtypes', nargs='+', choices=sorted(DTYPES), default=['fp32'])
    parser.add_argument('--modes', nargs='+', choices=['eager', 'graph', 'compile'], default=['eager'])
    parser.add_argument('--ratios', nargs='+', default=['0', '0.3', '0.6', '0.8', *PAPER_CONFIGS],
                        help='uniform ratios and/or names of the paper configurations')
    parser.add_argument('--learned-ratios', nargs='*', default=['0.6', 'paper cfg2'],
                        help="the same, for rows with scorer='learned' (the predictor's cost included)")


def _load_mmdet_swin_without_ops() -> type:
    """mmdet's ``SwinTransformer`` where mmcv has no compiled ops (mmcv-lite).

    ``mmdet.models`` imports modules that need ``mmcv.ops``; Swin itself needs
    only ``backbones/swin.py`` and the patch layers of ``layers/transformer/utils.py``,
    so those two source files are loaded on their own.
    """
    import importlib.util
    import sys
    import types

    import mmdet

    package_dir = Path(mmdet.__file__).parent / 'models'

    def load(module_name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module

    for name in ('mmdet.models', 'mmdet.models.backbones'):
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules.setdefault(name, package)
    sys.modules['mmdet.models.layers'] = load('mmdet.models.layers', package_dir / 'layers/transformer/utils.py')
    return load('mmdet.models.backbones.swin', package_dir / 'backbones/swin.py').SwinTransformer


def dense_reference() -> Tuple[str, Optional[torch.nn.Module]]:
    try:
        from mmdet.models.backbones import SwinTransformer
    except ImportError as error:
        try:
            SwinTransformer = _load_mmdet_swin_without_ops()
            print(f'mmdet.models failed to import ({error}); loaded mmdet\'s swin.py on its own')
        except ImportError:
            print('mmdet is not installed: the dense reference is SparseViTSwin at ratio 0')
            return 'SparseViTSwin ratio 0 (dense)', None
    return "mmdet SwinTransformer (dense)", SwinTransformer(drop_path_rate=0.)


def make_runner(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    """A no-argument callable that runs ``model`` on ``x`` in the given execution mode.

    Half-precision runs also enable autocast: mmdet's Swin adds its fp32 shift-mask
    buffer to fp16 scores, which only autocast reconciles; for models already in
    half precision it changes nothing.
    """
    autocast = torch.autocast(x.device.type, dtype=x.dtype, enabled=x.dtype != torch.float32)

    def forward(module: Callable) -> object:
        with torch.no_grad(), autocast:
            return module(x)

    if mode == 'eager':
        return lambda: forward(model)
    if mode == 'compile':
        torch._dynamo.reset()
        # Ours must trace as one graph; the reference may break into several.
        compiled = torch.compile(model, fullgraph=isinstance(model, SparseViTSwin))
        return lambda: forward(compiled)
    if x.device.type != 'cuda':
        raise ValueError('mode "graph" (CUDA graph replay) needs a CUDA device')
    graph, _ = capture_cuda_graph(lambda: forward(model))
    return graph.replay


def variant_name(name: str) -> str:
    return name if name in PAPER_CONFIGS else f'uniform {name}'


def parse_ratios(name: str):
    return PAPER_CONFIGS[name] if name in PAPER_CONFIGS else float(name)


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    device = args.device
    batches = args.batches or ([1, 4, 16] if device.type == 'cuda' else [1, 4])
    reference_name, reference = dense_reference()
    ours = SparseViTSwin(drop_path_rate=0.)
    if reference is not None:
        ours.load_state_dict(reference.state_dict())
    variants = [(reference_name, reference, None)] if reference is not None else []
    variants += [(f'SparseViTSwin {variant_name(name)}', ours, parse_ratios(name)) for name in args.ratios]
    if args.learned_ratios:
        # Random predictor weights: its cost, not its choices, is what the timing measures.
        learned = SparseViTSwin(drop_path_rate=0., scorer='learned')
        learned.load_state_dict(ours.state_dict(), strict=False)
        variants += [(f'SparseViTSwin learned scorer {variant_name(name)}', learned, parse_ratios(name))
                     for name in args.learned_ratios]

    image = torch.randn(1, 3, *args.size)
    macs = {}
    for name, model, ratios in variants:
        if ratios is not None:
            model.set_pruning_ratios(ratios)
        model.eval()
        macs[name] = count_macs(model, image)
    dense_macs = macs[variants[0][0]]

    rows = []
    for dtype_name in args.dtypes:
        for mode in args.modes:
            for batch in batches:
                x = torch.randn(batch, 3, *args.size, device=device, dtype=DTYPES[dtype_name])
                dense_ms = None
                for name, model, ratios in variants:
                    if ratios is not None:
                        model.set_pruning_ratios(ratios)
                    model.to(device=device, dtype=DTYPES[dtype_name]).eval()
                    latency = median_latency_ms(make_runner(model, x, mode), device, args.warmup, args.repeats)
                    dense_ms = dense_ms or latency
                    speedup = dense_ms / latency
                    macs_ratio = dense_macs / macs[name]
                    rows.append({'backbone': name, 'mode': mode, 'dtype': dtype_name, 'batch': batch,
                                 'GMACs/img': macs[name] / 1e9, 'latency ms': latency,
                                 'speedup': speedup, 'MACs ratio': macs_ratio, 'eff': speedup / macs_ratio})
    return rows
