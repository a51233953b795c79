"""Export to ONNX (run in ONNX Runtime) and torch.export: every backbone computes what it computes in PyTorch.

Exports are slow, so each (backbone, size) is exported once per module (``exported``) and every check reads it.
"""
import contextlib
import importlib.util
import io
import re
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn
from random_weights import randomize

from plugin.deploy import FeatureExtractor, load_runner, relative_differences, save, trace
from plugin.models.backbones import DynamicViT, EfficientFormer, EfficientFormerV2, SparseViTSwin
from plugin.models.utils.export_mode import group_norm_by_channel_means
from plugin.models.utils.records import recording
from plugin.models.utils.token_pruning import TokenKeepPredictor
from plugin.models.utils.window_ops import _word_view, gather_rows
from plugin.utils.cli import run_tool

REPO = Path(__file__).resolve().parents[1]
SIZES = [(224, 224), (333, 517)]
# Three stages (64, 16 and 4 windows at 224x224), each pruned; later blocks keep a prefix of the ranking.
SWIN = dict(embed_dims=16, depths=(2, 2, 2), num_heads=(1, 2, 2), strides=(4, 2, 2), out_indices=(0, 1, 2),
            drop_path_rate=0.)
SWIN_RATIOS = [[0.3, 0.5], [0.25, 0.5], [0.5, 0.5]]
EFFICIENTFORMER = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 2), num_vit=1, layer_scale_init_value=1.)
EFFICIENTFORMER_V2 = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), num_vit=1,
                          layer_scale_init_value=1.)
DYNAMIC_VIT = dict(embed_dims=48, depth=6, num_heads=3, pruning_locs=(1, 3, 5), drop_path_rate=0.)
ONNX_RTOL = 1e-4
PROGRAM_RTOL = 1e-5


def efficientformer(cls: type, fused: bool, **kwargs) -> nn.Module:
    model = randomize(cls(**kwargs)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'attention_biases' in name:
                param.normal_()  # the dense tables start at zero
    return model.fuse() if fused else model


def spread_predictor_scores(model: nn.Module) -> nn.Module:
    """PyTorch's default init for the keep predictors: the ViT init (std 0.02) scores every token alike, and
    near-ties are ranked by rounding, which differs between runtimes (see docs/deploy.md)."""
    for module in model.modules():
        if isinstance(module, TokenKeepPredictor):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
    return model


def swin(**kwargs) -> SparseViTSwin:
    model = SparseViTSwin(**SWIN, pruning_ratios=SWIN_RATIOS, **kwargs)
    model.init_weights()
    return spread_predictor_scores(model)


def dynamic_vit() -> DynamicViT:
    model = DynamicViT(**DYNAMIC_VIT)
    model.init_weights()
    return spread_predictor_scores(model)


BACKBONES = {
    'sparsevit-l2': swin,
    'sparsevit-learned': lambda: swin(scorer='learned'),
    'efficientformer': lambda: efficientformer(EfficientFormer, False, **EFFICIENTFORMER),
    'efficientformer-fused': lambda: efficientformer(EfficientFormer, True, **EFFICIENTFORMER),
    'efficientformer-v2': lambda: efficientformer(EfficientFormerV2, False, bias_mode='geometric',
                                                  **EFFICIENTFORMER_V2),
    'efficientformer-v2-fused': lambda: efficientformer(EfficientFormerV2, True, **EFFICIENTFORMER_V2),
    'dynamicvit': dynamic_vit,
}
# One dynamic-size export serves both sizes; the window and token counts of the others follow the export size.
DYNAMIC = {'efficientformer', 'efficientformer-fused', 'efficientformer-v2', 'efficientformer-v2-fused'}
CASES = [(name, None) for name in BACKBONES if name in DYNAMIC]
CASES += [(name, size) for name in BACKBONES if name not in DYNAMIC for size in SIZES]
SPARSEVIT_CASES = [case for case in CASES if case[0].startswith('sparsevit')]


def case_id(case) -> str:
    name, size = case
    return f'{name}-{"dynamic" if size is None else "x".join(map(str, size))}'


@pytest.fixture(scope='module')
def exported(tmp_path_factory, one_thread):
    """``exported(name, size)`` -> (extractor, ONNX file, .pt2 file, sizes the files hold for), made once per case."""
    cache = {}

    def export_case(name, size):
        if (name, size) not in cache:
            torch.manual_seed(0)
            extractor = FeatureExtractor(BACKBONES[name]()).eval()
            sizes = SIZES if size is None else [size]
            with torch.no_grad():
                extractor(torch.randn(1, 3, *sizes[0]))  # an eager call first: a cache it fills must stay out
            program = trace(extractor, torch.randn(1, 3, *sizes[0]), dynamic_size=size is None)
            directory = tmp_path_factory.mktemp(name)
            cache[name, size] = (extractor, save(program, 'onnx', directory / 'model.onnx'),
                                 save(program, 'torch-export', directory / 'model.pt2'), sizes)
        return cache[name, size]
    return export_case


def check_inputs(sizes):
    """Per size, two different inputs (at the first size the first is the export's shape, not its values)."""
    return [torch.randn(1, 3, *size) for size in sizes for _ in range(2)]


def assert_runner_matches(run, extractor, sizes, rtol):
    for image in check_inputs(sizes):
        with torch.no_grad():
            differences = relative_differences(run(image), extractor(image))
        assert max(differences) <= rtol, (tuple(image.shape), differences)


@pytest.mark.parametrize('case', CASES, ids=map(case_id, CASES))
def test_onnx_runtime_equals_pytorch(exported, case):
    extractor, onnx_path, _, sizes = exported(*case)
    assert_runner_matches(load_runner(onnx_path, 'onnx', threads=1), extractor, sizes, ONNX_RTOL)


@pytest.mark.parametrize('case', CASES, ids=map(case_id, CASES))
def test_torch_export_round_trip_equals_eager(exported, case):
    extractor, _, program_path, sizes = exported(*case)
    assert_runner_matches(load_runner(program_path, 'torch-export'), extractor, sizes, PROGRAM_RTOL)


@pytest.mark.parametrize('case', SPARSEVIT_CASES, ids=map(case_id, SPARSEVIT_CASES))
def test_exported_sparsevit_selects_windows_from_its_input(exported, case):
    """Two inputs keep different windows in PyTorch, and the ONNX graph follows both: its TopK ranks at run time."""
    extractor, onnx_path, _, sizes = exported(*case)
    assert 'TopK' in {node.op_type for node in onnx.load(str(onnx_path)).graph.node}
    run = load_runner(onnx_path, 'onnx', threads=1)
    kept = []
    for image in check_inputs(sizes):
        with torch.no_grad(), recording() as records:
            assert max(relative_differences(run(image), extractor(image))) <= ONNX_RTOL
        kept.append(records[0].stages[0].blocks[0].kept)
    assert not torch.equal(kept[0], kept[1])


def test_eager_gather_keeps_the_word_path_and_a_plain_onnx_export_call_works(tmp_path, one_thread):
    """The 8-byte-word gather stays in eager mode; ``torch.onnx.export(model, (x,))`` as a deployer calls it
    (gradients enabled, no plugin.deploy) exports SparseViT-Swin, whose eager path ONNX could not hold."""
    buffer = torch.randn(50, 16)
    rows = torch.tensor([3, 7, 7, 49])
    with torch.no_grad():
        assert _word_view(buffer) is not None  # the GPU fast path: 16 fp32 channels as 8 int64 words
        assert torch.equal(gather_rows(buffer, rows), buffer[rows])
    model = swin(scorer='learned').eval()
    image = torch.randn(1, 3, 224, 224)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (image, ), tmp_path / 'plain.onnx', input_names=['image'], external_data=False)
    with torch.no_grad():
        differences = relative_differences(load_runner(tmp_path / 'plain.onnx', 'onnx', threads=1)(image),
                                           model(image))
    assert max(differences) <= ONNX_RTOL


def test_exported_group_norm_holds_its_precision_in_onnx_runtime(tmp_path, one_thread):
    """GroupNorm(1, C) over 1.35M values: ONNX Runtime's one-pass sums are ~2e-5 off, the exported form is not."""
    norm = nn.GroupNorm(1, 48).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()

    class OutputNorm(nn.Module):
        def forward(self, x):
            return (group_norm_by_channel_means(norm, x), )

    x = torch.randn(1, 48, 168, 168) * 3 + 5
    reference = nn.functional.group_norm(x.double(), 1, norm.weight.double(), norm.bias.double(), norm.eps).float()
    assert torch.allclose(group_norm_by_channel_means(norm, x), reference, atol=1e-5)
    path = save(trace(FeatureExtractor(OutputNorm()), x), 'onnx', tmp_path / 'norm.onnx')
    assert max(relative_differences(load_runner(path, 'onnx', threads=1)(x), [reference])) <= 1e-6


def export_tool():
    spec = importlib.util.spec_from_file_location('tool_export', REPO / 'tools' / 'export.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_config(tmp_path: Path, base: str, overrides: str) -> str:
    path = tmp_path / 'tiny_config.py'
    base = base if '::' in base else str(REPO / base)
    path.write_text(f'_base_ = {base!r}\n{overrides}\n')
    return str(path)


TINY_EFFICIENTFORMER_CONFIG = (f'model = dict(backbone=dict(arch=None, embed_dims={EFFICIENTFORMER["embed_dims"]}, '
                               f'depths={EFFICIENTFORMER["depths"]}, num_vit=1, init_cfg=None), '
                               f'neck=dict(in_channels={list(EFFICIENTFORMER["embed_dims"])}))')
TINY_DYNAMIC_VIT = ('backbone=dict(arch=None, embed_dims=48, depth=6, num_heads=3, pruning_locs=(1, 3, 5), '
                    'init_cfg=None)')
TOOL_RUNS = {
    'sparsevit-torch-export': (
        'configs/demo/mask-rcnn_sparsevit-swin-mini_demo-shapes.py', '',
        ['--format', 'torch-export', '--shape', '160', '160', '--pruning-ratios', '0.3'], 4),
    'efficientformer-torch-export-dynamic-fused-with-neck': (
        'configs/efficientformer/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py', TINY_EFFICIENTFORMER_CONFIG,
        ['--format', 'torch-export', '--shape', '128', '160', '--dynamic', '--fuse', '--with-neck'], 4),
    'dynamicvit-segmentor-onnx': (
        'configs/dynamicvit/fpn_dynamicvit-deit-s-r0.7_4xb4-160k_ade20k-512x512.py',
        f'model = dict({TINY_DYNAMIC_VIT}, neck=dict(in_channels=[12, 24, 48, 48]))',
        ['--format', 'onnx', '--shape', '96', '128', '--whole-model'], 1),
}


@pytest.mark.parametrize('run', TOOL_RUNS.values(), ids=TOOL_RUNS.keys())
def test_export_tool_exports_and_checks_one_config_per_family(run, tmp_path, capsys, one_thread):
    base, overrides, options, num_outputs = run
    config = write_config(tmp_path, base, overrides) if overrides else str(REPO / base)
    out = tmp_path / ('model.pt2' if 'torch-export' in options else 'model.onnx')
    rows = export_tool().main([config, *options, '--out', str(out)])
    assert out.is_file()
    assert [row['outputs'] for row in rows] == [num_outputs, num_outputs]
    assert all(row['max relative diff'] <= ONNX_RTOL for row in rows)
    assert re.search(r'largest relative difference \S+ <= --rtol 0.0001', capsys.readouterr().out)
    if '--dynamic' in options:
        assert rows[1]['input'] == '165x221'  # --shape + (37, 61): the file holds at another size


@pytest.mark.parametrize('base, overrides, options, message', [
    ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'model = dict(backbone=dict(init_cfg=None))', [],
     "the model's backbone is ResNet; exporting supports this project's backbones: SparseViTSwin, "
     'EfficientFormer, EfficientFormerV2, DynamicViT'),
    ('configs/demo/mask-rcnn_sparsevit-swin-mini_demo-shapes.py', '', ['--fuse'],
     '--fuse folds the BatchNorms of EfficientFormer / EfficientFormerV2; the backbone is SparseViTSwin'),
    ('configs/demo/mask-rcnn_sparsevit-swin-mini_demo-shapes.py', '', ['--dynamic'],
     'SparseViTSwin exports at static sizes only'),
    ('configs/dynamicvit/mask-rcnn_dynamicvit-deit-s-r0.7_fpn_1x_coco.py', f'model = dict({TINY_DYNAMIC_VIT})',
     ['--dynamic'], 'DynamicViT exports at static sizes only'),
    ('configs/efficientformer/fpn_efficientformer-l1_8xb4-40k_ade20k-512x512.py', TINY_EFFICIENTFORMER_CONFIG,
     ['--pruning-ratios', '0.5'], '--pruning-ratios needs a window-sparse backbone'),
])
def test_export_tool_reports_bad_requests_in_one_line(base, overrides, options, message, tmp_path, capsys,
                                                      one_thread):
    config = write_config(tmp_path, base, overrides) if overrides else str(REPO / base)
    argv = [config, '--shape', '160', '160', *options, '--out', str(tmp_path / 'model.onnx')]
    assert run_tool(export_tool().main, argv) == 2
    # The last line: mmengine's logger may have left a handler on an earlier test's closed stream.
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r'\S+: error: ', last_line) and message in last_line


def test_export_tool_checks_the_file_name_against_the_format(tmp_path, capsys):
    config = str(REPO / 'configs/demo/fpn_efficientformerv2-s0_demo-shapes.py')
    with pytest.raises(SystemExit):
        export_tool().main([config, '--format', 'torch-export', '--shape', '64', '64', '--out', 'x.onnx'])
    assert '--out of --format torch-export must end in .pt2, got x.onnx' in capsys.readouterr().err
