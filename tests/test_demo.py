"""The demo end to end, shortened (--quick: tiny data, a few iterations): the tables, with the object coverage of
both window scorers, and the pictures appear; the terminal shows the steps and tables, the log file the rest."""
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import cv2
import pytest

from plugin.models.utils.sparsity import num_kept_windows

DEMO = Path(__file__).resolve().parents[1] / 'tools' / 'demo.py'
# Windows per pruned stage of the demo detector at 160x160: 40x40, 20x20 and 10x10 tokens in 5x5 windows.
WINDOWS_PER_STAGE = (64, 16, 4)


@pytest.fixture(scope='module')
def demo():
    spec = importlib.util.spec_from_file_location('demo', DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_demo_step_logs_what_the_libraries_print_and_names_itself_when_it_fails(demo, tmp_path, capsys):
    log_path = tmp_path / 'demo.log'
    with open(log_path, 'w') as log:
        with demo.demo_step(2, 'training', log, sys.stdout):
            print('a runner log line')
            warnings.warn('a library warning', UserWarning)
        with pytest.raises(RuntimeError, match='broken'), demo.demo_step(3, 'testing', log, sys.stdout):
            raise RuntimeError('broken')
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ['[demo] 2/7 training', '[demo] 3/7 testing']
    assert captured.err.splitlines() == [f'[demo] step 3/7 failed; what the libraries printed is in {log_path}']
    logged = log_path.read_text()
    assert 'a runner log line' in logged and 'UserWarning: a library warning' in logged


@pytest.mark.slow
def test_quick_demo_writes_tables_with_coverage_and_pictures(demo, tmp_path, one_thread, capsys):
    work_dir = tmp_path / 'demo'
    results = demo.main(['--quick', '--work-dir', str(work_dir), '--data-dir', str(tmp_path / 'data')])
    terminal = capsys.readouterr()

    assert json.loads((work_dir / 'results.json').read_text()) == results
    assert results['wall_time_s'] > 0 and results['quick'] and results['seed'] == 0
    detection = results['detection']
    for model in ('SparseViT-Swin, untrained', 'SparseViT-Swin, dense training'):
        assert [r['pruning ratio'] for r in detection if r['model'] == model] == list(demo.UNADAPTED_RATIOS)
    sparse_name = 'SparseViT-Swin, adapted, sparse all the way (skipped tiles: laterals)'
    fine_tuned_name = 'SparseViT-Swin, adapted, sparse all the way, fine-tuned sparse (skipped tiles: laterals)'
    for scorer in demo.SCORER_CONFIGS:
        adapted = [r for r in detection if r['model'] == 'SparseViT-Swin, adapted' and r['scorer'] == scorer]
        assert [r['pruning ratio'] for r in adapted] == list(demo.EVAL_RATIOS)
        assert all(r['whole speedup'] > 0 and r['whole ms'] > r['backbone ms'] > 0 for r in adapted)
        assert adapted[0]['backbone speedup'] == adapted[0]['whole speedup'] == 1.0
        sparse = [r for r in detection if r['model'] == sparse_name and r['scorer'] == scorer]
        assert [r['pruning ratio'] for r in sparse] == list(demo.SPARSE_RATIOS)
        for row in sparse:
            # the same backbone keeps the same windows: the same coverage; the neck and RPN then cost less
            backbone_only = next(r for r in adapted if r['pruning ratio'] == row['pruning ratio'])
            assert {k: v for k, v in row.items() if k.startswith(('coverage', 'kept area'))} == \
                {k: v for k, v in backbone_only.items() if k.startswith(('coverage', 'kept area'))}
        fine_tuned = [r for r in detection if r['model'] == fine_tuned_name and r['scorer'] == scorer]
        assert [r['pruning ratio'] for r in fine_tuned] == list(demo.SPARSE_RATIOS)
        for row in fine_tuned:
            backbone_only = next(r for r in adapted if r['pruning ratio'] == row['pruning ratio'])
            assert row['whole GMACs'] < backbone_only['whole GMACs'] and row['whole ms'] > row['backbone ms'] > 0
        for fill in ('zero', 'coarser'):
            assert [r['pruning ratio'] for r in detection if r['scorer'] == scorer and f'skipped tiles: {fill}' in
                    r['model']] == [demo.PICTURE_RATIO]
    onnx = [r for r in detection if 'ONNX Runtime' in r['model']]
    assert len(onnx) == 1 and onnx[0]['whole ms'] > 0
    pytorch = next(r for r in detection if r['model'] == 'SparseViT-Swin, adapted' and r['scorer'] == demo.ONNX_SCORER
                   and r['pruning ratio'] == demo.ONNX_RATIO)
    assert abs(onnx[0]['bbox AP'] - pytorch['bbox AP']) <= 0.005
    for row in detection:
        assert 0 <= row['bbox AP'] <= 1 and 0 <= row['segm AP'] <= 1
        if row in onnx:
            continue
        for stage, windows in enumerate(WINDOWS_PER_STAGE, start=1):
            # the windows tile the image, so the kept area is the kept share of the windows
            kept_share = num_kept_windows(windows, row['pruning ratio']) / windows
            assert row[f'kept area s{stage}'] == pytest.approx(kept_share)
            assert 0 <= row[f'coverage s{stage}'] <= 1
            if row['pruning ratio'] == 0:
                assert row[f'coverage s{stage}'] == 1
    segmentation = results['segmentation']
    assert len(segmentation) == 2 and all(0 <= r['mIoU'] <= 1 for r in segmentation)

    table = (work_dir / 'results.md').read_text()
    assert '| coverage s1 | coverage s2 | coverage s3 | kept area s1 |' in table
    assert table.count('| SparseViT-Swin, adapted |') == 2 * len(demo.EVAL_RATIOS)
    assert table.count(f'| {sparse_name} |') == table.count(f'| {fine_tuned_name} |') == 2 * len(demo.SPARSE_RATIOS)
    assert f'{results["wall_time_s"]:.0f} s' in table
    pictures = sorted(p.name for p in work_dir.glob('*.png'))
    assert pictures == sorted([f'detection_windows_{i}.png' for i in range(demo.NUM_PICTURES)]
                              + [f'segmentation_{i}.png' for i in range(demo.NUM_PICTURES)])
    assert all((work_dir / name).stat().st_size > 50_000 for name in pictures)
    # one row per scorer of 3 stage panels and the predictions; image, ground truth and prediction side by side
    assert cv2.imread(str(work_dir / 'detection_windows_0.png')).shape[:2] == (912, 1536)
    assert cv2.imread(str(work_dir / 'segmentation_0.png')).shape[:2] == (468, 1152)

    # The terminal: a line per step, the tables and where the files are; the runners' logs are in the log file.
    steps = [line for line in terminal.out.splitlines() if line.startswith('[demo] ') and '/7 ' in line]
    assert [line.split()[1] for line in steps] == [f'{step}/7' for step in range(1, 8)]
    assert table in terminal.out and ' - mmengine - ' not in terminal.out + terminal.err
    assert str(work_dir / 'demo.log') in terminal.out
    assert 'adapt_l2 train: 100%' in terminal.err and 'finetune_learned train: 100%' in terminal.err
    logged = (work_dir / 'demo.log').read_text()
    assert ' - mmengine - INFO - Iter(train)' in logged
    # the adapted weights reach both the sparse tests and the sparse fine-tuning (a runner that tested first
    # would train from re-initialised weights)
    for scorer in ('l2', 'learned'):
        assert logged.count(f'Load checkpoint from {work_dir}/adapt_{scorer}/iter_{demo.QUICK_ITERS}.pth') == 2
