"""mmdet's and mmseg's own scripts on this project's configs, run as a user runs them: training killed after a
checkpoint and resumed with ``--resume``, ``tools/test.py`` on the checkpoint, and mmengine's FLOP counter.

The scripts load mmengine's checkpoints with torch's weights-only loader; `import plugin` (the configs'
custom_imports) allow-lists what those checkpoints hold, with no environment variable set.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mmdet
import mmseg
import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.runner import Runner
from tiny_configs import (
    IMAGE_SIZE,
    REPO_ROOT,
    TINY_BACKBONE,
    runner_settings,
    tiny_detection_cfg,
    tiny_segmentation_cfg,
)

from plugin.demo_data.synthetic import write_ade, write_coco
from plugin.models.backbones import SparseViTSwin
from plugin.utils import count_macs

MMDET_TOOLS = Path(mmdet.__file__).parent / '.mim' / 'tools'
MMSEG_TOOLS = Path(mmseg.__file__).parent / '.mim' / 'tools'
ITERS, CHECKPOINT_INTERVAL = 6, 2


def script_env() -> dict:
    """The test's environment for a script, one thread each, without any weights-only override."""
    env = {k: v for k, v in os.environ.items() if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'}
    return dict(env, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                                   env.get('PYTHONPATH')])))


def run_script(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], env=script_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_mmdet_train_killed_after_a_checkpoint_resumes_and_tests(tmp_path):
    data_root = write_coco(tmp_path / 'data', seed=0, num_train=6, num_val=2, image_size=IMAGE_SIZE)
    work_dir = tmp_path / 'work'
    cfg = runner_settings(tiny_detection_cfg(data_root, work_dir), work_dir, ITERS, CHECKPOINT_INTERVAL)
    config = tmp_path / 'tiny_mask-rcnn_sparsevit.py'
    cfg.dump(str(config))
    train = [str(MMDET_TOOLS / 'train.py'), str(config), '--work-dir', str(work_dir)]

    process = subprocess.Popen([sys.executable, *train], env=script_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    first = work_dir / f'iter_{CHECKPOINT_INTERVAL}.pth'
    deadline = time.monotonic() + 180
    # mmengine writes `last_checkpoint` once the checkpoint file is complete.
    while not ((work_dir / 'last_checkpoint').is_file() and process.poll() is None):
        assert process.poll() is None, f'training ended before its first checkpoint: {process.stderr.read()[-3000:]}'
        assert time.monotonic() < deadline, 'no checkpoint within 180 s'
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.is_file() and not (work_dir / f'iter_{ITERS}.pth').is_file()

    resumed = run_script(*train, '--resume')
    log = resumed.stdout + resumed.stderr
    assert 'resumed epoch: 0, iter:' in log and 'Unsupported global' not in log
    assert (work_dir / f'iter_{ITERS}.pth').is_file()

    tested = run_script(str(MMDET_TOOLS / 'test.py'), str(config), str(work_dir / f'iter_{ITERS}.pth'),
                        '--work-dir', str(tmp_path / 'test'))
    assert 'coco/bbox_mAP' in tested.stdout + tested.stderr


@pytest.mark.slow
def test_mmseg_test_script_loads_a_runner_checkpoint(tmp_path):
    data_root = write_ade(tmp_path / 'data', seed=0, num_train=4, num_val=2, image_size=IMAGE_SIZE)
    cfg = runner_settings(tiny_segmentation_cfg(data_root, tmp_path / 'work'), tmp_path / 'work', 2, 2)
    Runner.from_cfg(cfg).train()
    config = tmp_path / 'tiny_fpn_sparsevit.py'
    cfg.dump(str(config))
    tested = run_script(str(MMSEG_TOOLS / 'test.py'), str(config), str(tmp_path / 'work' / 'iter_2.pth'),
                        '--work-dir', str(tmp_path / 'test'))
    assert 'mIoU' in tested.stdout + tested.stderr


def test_mmengine_flop_counter_counts_attention(one_thread):
    backbone = SparseViTSwin(**TINY_BACKBONE, pruning_ratios=[[0.5, 0.5], 0., 0., 0.]).eval()
    image = torch.randn(1, 3, 112, 112)
    analyzer = FlopAnalyzer(backbone, (image,))
    by_operator = analyzer.by_operator()
    assert by_operator['scaled_dot_product_attention'] > 0
    assert 'aten::scaled_dot_product_attention' not in analyzer.unsupported_ops()
    # mmengine also counts LayerNorms, which torch's counter (count_macs) leaves out; the rest agrees exactly.
    assert analyzer.total() - by_operator['layer_norm'] == count_macs(backbone, image)
