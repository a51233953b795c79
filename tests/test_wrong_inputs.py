"""What a wrong input gets: each bad config, checkpoint, image or argument ends in one clear message.

docs/wrong_inputs.md lists these cases with their messages.
"""
import importlib.util
import pickle
from collections import OrderedDict

import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import MODELS, init_default_scope
from tiny_configs import IMAGE_SIZE, REPO_ROOT, TINY_BACKBONE, tiny_detection_cfg

from plugin.demo_data.synthetic import write_coco
from plugin.models.backbones import EfficientFormerV2
from plugin.models.backbones.efficientformer_convert import convert_efficientformerv2_keys
from plugin.models.utils.checkpoint import read_checkpoint
from plugin.utils.cli import run_tool


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f'tool_{name}', REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def tiny_detector(tmp_path_factory):
    """A tiny SparseViT Mask R-CNN config on synthetic data, and a checkpoint of a wider one."""
    root = tmp_path_factory.mktemp('wrong_inputs')
    data_root = write_coco(root / 'data', seed=0, num_train=1, num_val=1, image_size=IMAGE_SIZE)
    cfg = tiny_detection_cfg(data_root, root / 'work')
    config = root / 'tiny_det.py'
    cfg.dump(str(config))
    init_default_scope('mmdet')
    cfg.model.backbone.embed_dims = 2 * TINY_BACKBONE['embed_dims']
    wider = root / 'wider.pth'
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict(), 'meta': {}}, wider)
    return config, wider, next((data_root / 'val').glob('*.jpg'))


def test_count_macs_refuses_a_checkpoint_of_another_architecture(tiny_detector, capsys):
    config, wider, _ = tiny_detector
    status = run_tool(load_tool('count_macs').main, [str(config), '--checkpoint', str(wider), '--shape', '64', '64'])
    error = capsys.readouterr().err
    assert status == 2
    assert f'error: {wider} does not fit MaskRCNN' in error
    assert 'shape mismatches: backbone.patch_embed.projection.weight (32, 3, 4, 4) (model: (16, 3, 4, 4))' in error


def test_visualize_windows_checks_the_image_before_building_the_model(tiny_detector, capsys, monkeypatch):
    config, wider, _ = tiny_detector
    tool = load_tool('visualize_windows')
    monkeypatch.setattr(tool, 'init_model', lambda *args: pytest.fail('the model was built before the image check'))
    status = run_tool(tool.main, [str(config), str(wider), 'no_such.jpg', '--out', 'x.png'])
    assert status == 2 and 'error: image no_such.jpg does not exist' in capsys.readouterr().err


def test_visualize_windows_tells_other_backbones_what_to_use(tmp_path, tiny_detector, capsys):
    _, wider, image = tiny_detector
    config = REPO_ROOT / 'configs/efficientformer/mask-rcnn_efficientformer-l1_fpn_1x_coco.py'
    status = run_tool(load_tool('visualize_windows').main, [str(config), str(wider), str(image), '--out',
                                                            str(tmp_path / 'x.png')])
    error = capsys.readouterr().err
    assert status == 2 and "the config's backbone is EfficientFormer" in error and 'inferencer' in error
    assert 'hook' not in error


def test_visualize_windows_does_not_repeat_mmdets_coco_classes_warning(tiny_detector, tmp_path, recwarn):
    config, _, image = tiny_detector
    init_default_scope('mmdet')
    from mmengine.config import Config
    cfg = Config.fromfile(str(config))
    checkpoint = tmp_path / 'tiny.pth'
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict(), 'meta': {}}, checkpoint)
    load_tool('visualize_windows').main([str(config), str(checkpoint), str(image), '--out', str(tmp_path / 'w.png'),
                                         '--device', 'cpu'])
    assert not [w for w in recwarn if 'COCO classes' in str(w.message)]


def test_convert_checkpoint_refuses_weights_of_another_family(tmp_path, capsys):
    v2 = EfficientFormerV2(arch='s0')
    source = tmp_path / 'v2.pth'
    torch.save({'state_dict': OrderedDict(v2.state_dict())}, source)
    status = run_tool(load_tool('convert_checkpoint').main,
                      ['--model', 'efficientformer', str(source), str(tmp_path / 'x.pth')])
    error = capsys.readouterr().err
    assert status == 2 and not (tmp_path / 'x.pth').exists()
    assert 'the converted weights fit no EfficientFormer architecture (l1, l3, l7): check --model' in error
    assert convert_efficientformerv2_keys(v2.state_dict()).keys() == v2.state_dict().keys()


def test_every_tool_runs_through_run_tool():
    """Every tool's entry point is ``sys.exit(run_tool(main))``: one error line and exit status 2 for a bad input."""
    tools = sorted((REPO_ROOT / 'tools').glob('*.py'))
    assert tools
    for tool in tools:
        assert "if __name__ == '__main__':\n    sys.exit(run_tool(main))\n" in tool.read_text(), tool.name


@pytest.mark.parametrize('tool, argv, message', [
    ('build_latency_lut', ['--config', 'no_such.py', '--input-size', '64', '64', '--out', 'lut.json'], 'no_such.py'),
    ('slim', ['none', '--lut', 'no_such.json', '--budget-ms', '1', '--out', 'x.py'], 'no_such.json'),
    ('make_demo_data', ['--out', 'demo', '--tasks', 'coco', '--num-val', '0'], 'val images'),
    ('check_equivalence', ['--device', 'cuda'], 'no CUDA device'),
], ids=['build_latency_lut', 'slim', 'make_demo_data', 'check_equivalence'])
def test_tools_end_a_bad_input_with_one_error_line(tool, argv, message, tmp_path, capsys, monkeypatch):
    if tool == 'check_equivalence' and torch.cuda.is_available():
        pytest.skip('this machine has the CUDA device the bad input asks for')
    monkeypatch.chdir(tmp_path)
    assert run_tool(load_tool(tool).main, argv) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and ': error: ' in error and message in error, error
    assert not list(tmp_path.iterdir())


def test_benchmark_ratio_settings_name_the_paper_configurations():
    from plugin.benchmarks.sparsevit import ratio_setting, resolve_ratios
    assert resolve_ratios(ratio_setting('cfg2'))[0] == [0.6, 0.6]
    assert resolve_ratios(ratio_setting('0.3')) == 0.3
    for bad in ('cfg9', '1.5', 'paper'):
        with pytest.raises(Exception, match=r"a uniform ratio in \[0, 1\) or one of the paper's configurations "
                                            r"\('cfg1', 'cfg2', 'cfg3'\)"):
            ratio_setting(bad)


class Unlisted:
    """A type no allow-list names."""


def test_weights_only_loading_refuses_what_is_not_allow_listed(tmp_path):
    path = tmp_path / 'odd.pth'
    torch.save({'state_dict': {}, 'meta': {'hook': Unlisted()}}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)holds Python objects that torch's weights-only loader "
                                                     r"refuses.*Unlisted"):
        read_checkpoint(str(path))


def test_the_getattr_allowed_in_checkpoints_answers_only_history_buffer_statistics():
    from plugin.utils.safe_globals import history_buffer_statistic
    assert history_buffer_statistic(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for owner, name in ((HistoryBuffer, '__init__'), (HistoryBuffer, 'update'), (torch, 'load')):
        with pytest.raises(pickle.UnpicklingError, match='only the statistics methods'):
            history_buffer_statistic(owner, name)
