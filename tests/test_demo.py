"""The demo end to end, shortened (--quick: tiny data, a few iterations): the table and the pictures appear."""
import importlib.util
import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / 'tools' / 'demo.py'


@pytest.mark.slow
def test_quick_demo_writes_table_and_pictures(tmp_path):
    spec = importlib.util.spec_from_file_location('demo', DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    work_dir = tmp_path / 'demo'
    rows = demo.main(['--quick', '--work-dir', str(work_dir), '--data-dir', str(tmp_path / 'data')])

    assert json.loads((work_dir / 'results.json').read_text()) == rows
    table = (work_dir / 'results.md').read_text()
    detection = [r for r in rows if r['task'] == 'detection' and 'adapted' in r['backbone']]
    assert [r['pruning ratio'] for r in detection] == list(demo.EVAL_RATIOS)
    assert all(0 <= r['bbox AP'] <= 1 and 0 <= r['segm AP'] <= 1 and r['speedup'] > 0 for r in detection)
    assert detection[0]['speedup'] == 1.0
    segmentation = [r for r in rows if r['task'] == 'segmentation']
    assert len(segmentation) == 2 and all(0 <= r['mIoU'] <= 1 for r in segmentation)
    assert table.count('\n') == len(rows) + 2
    pictures = sorted(p.name for p in work_dir.glob('*.png'))
    assert pictures == sorted([f'detection_windows_{i}.png' for i in range(demo.NUM_PICTURES)]
                              + [f'segmentation_{i}.png' for i in range(demo.NUM_PICTURES)])
    assert all((work_dir / name).stat().st_size > 10_000 for name in pictures)
