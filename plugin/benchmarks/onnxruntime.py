"""SparseViT-Swin-T and EfficientFormer-L1 exported to ONNX and run in ONNX Runtime on the CPU, beside PyTorch eager.

Every backbone is exported as ``tools/export.py`` exports it (``plugin.deploy``: torch.export,
then torch.onnx) at ``--size``, batch 1; the dense reference is mmdet's ``SwinTransformer``
exported the same way. Both runtimes get the same threads (``--threads``: ``torch.set_num_threads``
and ONNX Runtime's ``intra_op_num_threads``, one inter-op thread), and every model in both
runtimes is timed in alternation in one run (ONNX Runtime's idle threads do not spin, so they leave
the cores to the next model). ``speedup`` = dense Swin-T ms / ms in the same
runtime, ``eff`` = speedup / MACs ratio, ``ORT over torch`` = torch ms / ORT ms of the same
model; ``ORT rel diff`` = max |ORT - torch| / max |torch| of the timed input. EfficientFormer-L1
runs in its deployment form (``fuse()``: BatchNorm folded) in both runtimes.
"""
import argparse
import copy
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..deploy import FeatureExtractor, load_runner, relative_differences, save, trace
from ..models.backbones import EfficientFormer, SparseViTSwin
from ..utils import alternating_latency_ms, count_macs
from ..utils.references import mmdet_swin_transformer
from .sparsevit import PAPER_NAMES, ratio_setting, resolve_ratios, variant_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--size', type=int, nargs=2, default=(672, 672), metavar=('H', 'W'))
    parser.add_argument('--ratios', nargs='+', type=ratio_setting, default=['0', *PAPER_NAMES, '0.3', '0.6', '0.8'],
                        help=f'uniform ratios in [0, 1) and/or the paper\'s searched configurations {PAPER_NAMES}')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='intra-op threads of PyTorch and of ONNX Runtime')
    parser.add_argument('--no-efficientformer', action='store_true', help='leave out the EfficientFormer-L1 row')


def backbones(args: argparse.Namespace) -> dict[str, nn.Module]:
    """The compared backbones by row name, the dense reference first, each a module of its own (timed together)."""
    reference_name, reference = mmdet_swin_transformer(drop_path_rate=0.)
    ours = SparseViTSwin(drop_path_rate=0.)
    models: dict[str, nn.Module] = {}
    if reference is None:
        print(f'{reference_name}: the dense reference is SparseViTSwin at ratio 0')
    else:
        ours.load_state_dict(reference.state_dict())
        models[reference_name] = reference
    for setting in args.ratios:
        model = copy.deepcopy(ours)
        model.set_pruning_ratios(resolve_ratios(setting))
        models[f'SparseViTSwin {variant_name(setting)}'] = model
    if not args.no_efficientformer:
        models['EfficientFormer-L1 (fused)'] = EfficientFormer(arch='l1').eval().fuse()
    return models


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.device.type != 'cpu':
        raise ValueError(f'the onnxruntime suite compares CPU runtimes (ONNX Runtime\'s CPU build): pass --device '
                         f'cpu, got {args.device}')
    import onnxruntime
    torch.set_num_threads(args.threads)
    print(f'PyTorch and ONNX Runtime {onnxruntime.__version__} (CPUExecutionProvider) with {args.threads} '
          f'intra-op thread(s) each, batch 1, {args.size[0]}x{args.size[1]}')
    torch.manual_seed(0)
    image = torch.randn(1, 3, *args.size)
    models = {name: FeatureExtractor(model).eval() for name, model in backbones(args).items()}
    macs = {name: count_macs(model, image) for name, model in models.items()}
    runners: dict[str, dict[str, Callable[[], object]]] = {}
    differences = {}
    with tempfile.TemporaryDirectory() as directory:
        for index, (name, model) in enumerate(tqdm(models.items(), desc='exporting to ONNX', unit='model')):
            path = save(trace(model, image), 'onnx', Path(directory) / f'model{index}.onnx')
            run_onnx = load_runner(path, 'onnx', threads=args.threads, spinning=False)
            with torch.no_grad():
                differences[name] = max(relative_differences(run_onnx(image), model(image)))
            runners[name] = {'torch': functools.partial(model, image), 'ORT': functools.partial(run_onnx, image)}
        timed = [(name, runtime) for name in runners for runtime in runners[name]]
        latency = dict(zip(timed, alternating_latency_ms([runners[name][runtime] for name, runtime in timed],
                                                         args.device, args.warmup, args.repeats)))

    dense = next(iter(models))
    rows = []
    for name in models:
        row = {'backbone': name, 'GMACs': macs[name] / 1e9}
        swin_row = not name.startswith('EfficientFormer')
        if swin_row:
            row['MACs ratio'] = macs[dense] / macs[name]
        for runtime in ('torch', 'ORT'):
            row[f'{runtime} ms'] = latency[name, runtime]
            if swin_row:
                row[f'{runtime} speedup'] = latency[dense, runtime] / latency[name, runtime]
                row[f'{runtime} eff'] = row[f'{runtime} speedup'] / row['MACs ratio']
        row['ORT over torch'] = latency[name, 'torch'] / latency[name, 'ORT']
        row['ORT rel diff'] = differences[name]
        rows.append(row)
    return rows
