"""EfficientFormer latency-driven slimming: the supernet, the latency lookup table, the greedy
search and its config, and the CLI tools, on a tiny supernet with 64x64 inputs."""
import copy
import importlib.util
import itertools
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.registry import MODELS
from timm.models.efficientformer import Downsample, MetaBlock2d, Stem4

import plugin  # noqa: F401  (registers the project's modules)
from plugin.engine import GumbelTemperatureHook
from plugin.models.backbones import EfficientFormer, EfficientFormerSupernet
from plugin.models.backbones.efficientformer import AttentionMetaBlock
from plugin.slimming import (
    SubNetwork,
    build_latency_lut,
    candidate_entries,
    predict_config_latency,
    predict_latency,
    slim,
    write_config,
)

SPACE = dict(width_choices=[[8, 16], [16, 24], [24, 32], [32, 48]], depths=[2, 1, 2, 3], num_vit=2)
INPUT_SIZE = (64, 64)
TOOLS = Path(__file__).resolve().parents[1] / 'tools'


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def lut():
    return build_latency_lut(SPACE, INPUT_SIZE, warmup=1, repeats=1)


def synthetic_lut(lut: dict) -> dict:
    """The measured table's keys with deterministic costs (channels x pixels), for exact search checks."""
    table = copy.deepcopy(lut)
    for key in table['entries']:
        channels, height, width = map(int, re.findall(r'(\d+) @(\d+)x(\d+)', key)[0])
        table['entries'][key] = channels * height * width / 1e4
    return table


def executed_entries(config: dict, input_size=INPUT_SIZE) -> list:
    """Table keys of what ``EfficientFormer(**config)`` actually runs, recorded by forward hooks."""
    model = EfficientFormer(**config).eval()
    keys = []

    def record(module, args, output):
        x = args[0]
        if isinstance(module, AttentionMetaBlock):
            keys.append(f'block3d {x.shape[2]} @{args[1][0]}x{args[1][1]}')
            return
        size = f'@{x.shape[2]}x{x.shape[3]}'
        if isinstance(module, (Stem4, Downsample)):
            kind = 'stem' if isinstance(module, Stem4) else 'downsample'
            keys.append(f'{kind} {x.shape[1]}->{output.shape[1]} {size}')
        elif isinstance(module, MetaBlock2d):
            keys.append(f'block4d {x.shape[1]} {size}')
        else:
            keys.append(f'out_norm {x.shape[1]} {size}')

    for name, module in model.named_modules():
        if isinstance(module, (Stem4, Downsample, MetaBlock2d, AttentionMetaBlock)) or re.fullmatch(r'norm\d', name):
            module.register_forward_hook(record)
    with torch.no_grad():
        model(torch.rand(1, 3, *input_size))
    return keys


def test_lut_has_an_entry_for_every_candidate(lut):
    assert lut['device'] and lut['input_size'] == list(INPUT_SIZE) and lut['space'] == SPACE
    assert all(math.isfinite(ms) and ms > 0 for ms in lut['entries'].values())
    assert set(lut['entries']) == set(candidate_entries(SPACE, INPUT_SIZE))
    used = set()
    for embed_dims in itertools.product(*SPACE['width_choices']):
        config = dict(embed_dims=list(embed_dims), depths=SPACE['depths'], num_vit=SPACE['num_vit'])
        used |= set(executed_entries(config))
    # Every part any width combination runs is in the table, and the table holds nothing else.
    assert used == set(lut['entries'])


def test_predicted_latency_is_the_sum_of_its_entries(lut):
    config = dict(embed_dims=[16, 16, 32, 32], depths=[1, 1, 0, 3], num_vit=1)
    keys = executed_entries(config)
    assert predict_config_latency(lut, config) == pytest.approx(sum(lut['entries'][k] for k in keys))
    # Raising one entry raises the prediction once per block that uses it.
    raised = copy.deepcopy(lut)
    raised['entries']['block4d 32 @2x2'] += 5.
    assert predict_config_latency(raised, config) == pytest.approx(predict_config_latency(lut, config) + 10.)
    with pytest.raises(ValueError, match='no entry'):
        predict_latency(lut, ['block4d 40 @16x16'])


def test_odd_input_sizes_round_up_like_the_network(lut):
    config = dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 2], num_vit=1)
    table = build_latency_lut(dict(SPACE, width_choices=[[w] for w in config['embed_dims']]), (67, 45),
                              warmup=0, repeats=1)
    assert predict_config_latency(table, config) == pytest.approx(
        sum(table['entries'][k] for k in executed_entries(config, (67, 45))))


@pytest.mark.parametrize('fraction', [0.9, 0.7, 0.5])
def test_slimming_meets_the_budget_once_and_builds_a_working_network(lut, fraction, tmp_path):
    table = synthetic_lut(lut)
    supernet = EfficientFormerSupernet(**SPACE)
    full = predict_latency(table, SubNetwork.full(SPACE).entries(INPUT_SIZE))
    budget = fraction * full
    net, steps = slim(table, supernet.importance(), budget)

    latencies = [full] + [step.latency_ms for step in steps]
    assert latencies[-1] <= budget < latencies[-2], 'stops at the first step at or under the budget'
    assert all(a > b for a, b in zip(latencies, latencies[1:]))
    assert latencies[-1] == pytest.approx(predict_latency(table, net.entries(INPUT_SIZE)))
    removed = [(step.action, step.target) for step in steps if step.action != 'shrink_width']
    assert len(removed) == len(set(removed)), 'a block was removed twice'
    assert sum(not kept for keep in net.conv_keep for kept in keep) + sum(not k for k in net.vit_keep) == len(removed)

    config = net.config()
    assert config == supernet.subnet_config(net.conv_keep, net.vit_keep, net.embed_dims)
    path = tmp_path / 'slimmed.py'
    write_config(str(path), config, ['test'])
    backbone = MODELS.build(Config.fromfile(str(path)).model.backbone)
    assert isinstance(backbone, EfficientFormer)
    outs = backbone.eval()(torch.rand(1, 3, 67, 45))
    assert [out.shape[1] for out in outs] == config['embed_dims']
    assert predict_config_latency(table, config) == pytest.approx(latencies[-1])


def test_slimming_follows_importance_per_latency_saved(lut):
    table = synthetic_lut(lut)
    supernet = EfficientFormerSupernet(**SPACE)
    unimportant = supernet.stages[1].conv_paths[0]
    with torch.no_grad():
        unimportant.arch_logits.copy_(torch.tensor([-4., 4.]))
        for stage in supernet.stages:
            stage.width.arch_logits.copy_(torch.tensor([-4., 4.]))
        for path in supernet.stages[-1].vit_paths:
            path.arch_logits.copy_(torch.tensor([4., -4.]))
    full = predict_latency(table, SubNetwork.full(SPACE).entries(INPUT_SIZE))
    _, steps = slim(table, supernet.importance(), full - 1e-6)
    assert [(s.action, s.target) for s in steps] == [('drop_block', (1, 0))]
    assert steps[0].importance_drop == pytest.approx(unimportant.importance())


def test_unreachable_budget_raises(lut):
    with pytest.raises(ValueError, match='unreachable'):
        slim(lut, EfficientFormerSupernet(**SPACE).importance(), 1e-9)


def test_supernet_matches_efficientformer_when_its_choices_are_certain():
    supernet = EfficientFormerSupernet(**SPACE, layer_scale_init_value=1.).eval()
    supernet.init_weights()
    conv_keep, vit_keep = [[True, False], [True], [False, True], [True]], [False, True]
    with torch.no_grad():
        for stage, keep in zip(supernet.stages, conv_keep):
            stage.width.arch_logits.copy_(torch.tensor([-40., 40.]))
            for path, kept in zip(stage.conv_paths, keep):
                path.arch_logits.copy_(torch.tensor([40., -40.] if kept else [-40., 40.]))
        for path, kept in zip(supernet.stages[-1].vit_paths, vit_keep):
            path.arch_logits.copy_(torch.tensor([40., -40.] if kept else [-40., 40.]))
    config = supernet.subnet_config(conv_keep, vit_keep, [w[-1] for w in SPACE['width_choices']])
    assert config == dict(embed_dims=[16, 24, 32, 48], depths=[1, 1, 1, 2], num_vit=1)
    model = EfficientFormer(**config, layer_scale_init_value=1.).eval()
    weights = {}
    for key, value in supernet.state_dict().items():
        match = re.match(r'stages\.(\d+)\.(conv|vit)_paths\.(\d+)\.block\.(.*)', key)
        if match is None:
            if 'arch_logits' not in key:
                weights[key] = value
            continue
        stage, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        keep = vit_keep if kind == 'vit' else conv_keep[stage]
        if keep[index]:
            offset = sum(conv_keep[stage]) if kind == 'vit' else 0
            weights[f'stages.{stage}.blocks.{offset + sum(keep[:index])}.{rest}'] = value
    model.load_state_dict(weights)
    x = torch.rand(1, 3, 67, 45)
    for ours, reference in zip(supernet(x), model(x)):
        torch.testing.assert_close(ours, reference)


def test_gumbel_architecture_weights_receive_gradients():
    torch.manual_seed(0)
    supernet = EfficientFormerSupernet(**SPACE, layer_scale_init_value=1., temperature=2.).train()
    logits = {name: p for name, p in supernet.named_parameters() if name.endswith('arch_logits')}
    assert len(logits) == sum(SPACE['depths']) + len(SPACE['depths'])
    sum(out.pow(2).mean() for out in supernet(torch.rand(2, 3, 64, 64))).backward()
    for name, param in logits.items():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    # Training samples fresh Gumbel noise; evaluation uses the plain softmax.
    x = torch.rand(1, 3, 64, 64)
    assert not torch.equal(supernet(x)[0], supernet(x)[0])
    supernet.eval()
    torch.testing.assert_close(supernet(x)[0], supernet(x)[0])


def test_temperature_hook_anneals_every_supernet():
    hook = GumbelTemperatureHook(start=4., end=0.25)
    assert hook.temperature(0.) == 4. and hook.temperature(1.) == pytest.approx(0.25)
    assert hook.temperature(0.5) == pytest.approx(1.)
    model = torch.nn.Module()
    model.backbone = EfficientFormerSupernet(**SPACE)
    runner = SimpleNamespace(model=model, iter=5, max_iters=11, message_hub=MessageHub.get_current_instance())
    hook.before_train_iter(runner, 0)
    assert model.backbone.stages[2].conv_paths[1].temperature == pytest.approx(1.)
    with pytest.raises(TypeError, match='EfficientFormerSupernet'):
        hook.before_train_iter(SimpleNamespace(model=torch.nn.Linear(1, 1), iter=0, max_iters=1), 0)
    with pytest.raises(ValueError, match='0 < end <= start'):
        GumbelTemperatureHook(start=1., end=2.)


def test_supernet_rejects_bad_choices():
    with pytest.raises(ValueError, match='width_choices'):
        EfficientFormerSupernet(width_choices=[[8], [16]], depths=[1, 1, 1, 1], num_vit=0)
    with pytest.raises(ValueError, match='num_vit'):
        EfficientFormerSupernet(**dict(SPACE, num_vit=4))
    with pytest.raises(ValueError, match='embed_dims'):
        EfficientFormerSupernet(**SPACE).subnet_config([[True] * 2, [True], [True] * 2, [True]], [True] * 2,
                                                       [8, 16, 24, 40])


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tools_build_a_table_and_slim_a_checkpoint(tmp_path, capsys):
    lut_path, out = tmp_path / 'lut.json', tmp_path / 'slimmed.py'
    load_tool('build_latency_lut').main([
        '--input-size', '64', '64', '--out', str(lut_path), '--widths', '8,16', '16', '24', '32,48',
        '--depths', '2', '1', '1', '2', '--num-vit', '1', '--warmup', '0', '--repeats', '1', '--threads', '1'])
    table = json.loads(lut_path.read_text())
    supernet = EfficientFormerSupernet(**table['space'])
    checkpoint = tmp_path / 'supernet.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in supernet.state_dict().items()}), checkpoint)
    full = predict_latency(table, SubNetwork.full(table['space']).entries(table['input_size']))
    load_tool('slim').main([str(checkpoint), '--lut', str(lut_path), '--budget-ms', str(0.7 * full),
                            '--out', str(out), '--warmup', '0', '--repeats', '1'])
    printed = capsys.readouterr().out
    assert 'step  1:' in printed and re.search(r'predicted [\d.]+ ms, measured [\d.]+ ms', printed)
    backbone = Config.fromfile(str(out)).model.backbone
    assert predict_config_latency(table, backbone) <= 0.7 * full
    MODELS.build(backbone).eval()(torch.rand(1, 3, 64, 64))
