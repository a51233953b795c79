"""The package as a released library: `pip install .` gives a working `import plugin`, every import is declared,
and the README points only at files and tools that exist."""
import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from plugin.version import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())
# Import names whose distribution is named otherwise.
DISTRIBUTIONS = {'cv2': 'opencv-python', 'mmseg': 'mmsegmentation', 'skimage': 'scikit-image', 'yaml': 'pyyaml'}
# Packages the plugin imports only through another declared one (numba comes with mmdet3d).
PROVIDED_BY = {'numba': 'mmdet3d'}


def declared_distributions() -> set:
    project = PYPROJECT['project']
    requirements = project['dependencies'] + [r for extra in project['optional-dependencies'].values() for r in extra]
    return {re.split(r'[<>=!~ \[;]', requirement, maxsplit=1)[0].lower() for requirement in requirements}


def imported_modules() -> set:
    modules = set()
    for path in (REPO_ROOT / 'plugin').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split('.')[0])
    return modules - set(sys.stdlib_module_names) - {'plugin'}


def test_every_runtime_import_is_declared():
    declared = declared_distributions()
    undeclared = sorted(module for module in imported_modules()
                        if DISTRIBUTIONS.get(module, module).lower() not in declared
                        and PROVIDED_BY.get(module) not in declared)
    assert not undeclared, f'plugin/ imports {undeclared}, which pyproject.toml does not declare'


def test_version_has_one_source():
    assert PYPROJECT['project']['dynamic'] == ['version']
    assert PYPROJECT['tool']['setuptools']['dynamic']['version'] == {'attr': 'plugin.version.__version__'}
    assert "version=" not in (REPO_ROOT / 'setup.py').read_text()


# Run in a fresh process from outside the repository with only the installed wheel (and the stack) importable:
# the package is where it was installed, ships its configs and tools, builds the paper's cfg2 by name, and a
# user's config that inherits a shipped one through the effidense:: scope trains one step.
INSTALLED_PROBE = '''
import importlib.metadata, sys
from pathlib import Path
import torch
import plugin
from mmengine.config import Config
from mmengine.registry import HOOKS, MODELS
from mmengine.runner import Runner
from plugin.benchmarks import mono3d, search
from plugin.demo_data import make_demo_data
from plugin.models.backbones import SparseViTSwin
from plugin.utils.package_data import CONFIG_ROOT
target = sys.argv[1]
for path in (plugin.__file__, CONFIG_ROOT, search.CONFIG, search.SEARCH_TOOL, mono3d.CONFIG_DIR):
    assert str(path).startswith(target), path
assert importlib.metadata.version('effidense') == plugin.__version__
for name in ('SparseViTSwin', 'EfficientFormer', 'EfficientFormerV2', 'EfficientFormerSupernet', 'DynamicViT'):
    assert MODELS.get(name) is not None, name
assert HOOKS.get('SparsityAwareAdaptationHook') is not None

backbone = SparseViTSwin(pruning_ratios='cfg2').eval()
with torch.no_grad():
    features = backbone(torch.randn(1, 3, 64, 64))
assert [f.shape[1] for f in features] == [96, 192, 384, 768], [f.shape for f in features]
assert any(any(stage) for stage in backbone.pruning_ratios), backbone.pruning_ratios

make_demo_data('data', seed=0, image_size=(64, 64), tasks=('coco',), num_train=2, num_val=1)
Path('my_detector.py').write_text(\'\'\'
_base_ = ['effidense::demo/mask-rcnn_sparsevit-swin-mini_demo-shapes.py']
data_root = 'data/coco/'
train_dataloader = dict(batch_size=2, num_workers=0, dataset=dict(data_root=data_root))
train_cfg = dict(max_iters=1, val_interval=1)
val_cfg = val_dataloader = val_evaluator = None
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
work_dir = 'work_dir'
\'\'\')
cfg = Config.fromfile('my_detector.py')
assert cfg.model.backbone.type == 'SparseViTSwin' and cfg.model.backbone.embed_dims == 32, cfg.model.backbone
runner = Runner.from_cfg(cfg)
runner.train()
assert runner.iter == 1 and Path('work_dir/iter_1.pth').is_file()
print('ok', plugin.__version__)
'''


@pytest.mark.slow
def test_wheel_ships_the_configs_and_works_installed_outside_the_repository(tmp_path):
    # A copy of what the source distribution holds, so that the build leaves nothing in the repository; the
    # links in plugin/.mim/ stay links, as in a clone.
    source = tmp_path / 'source'
    ignore = shutil.ignore_patterns('__pycache__')
    shutil.copytree(REPO_ROOT / 'plugin', source / 'plugin', symlinks=True, ignore=ignore)
    for folder in ('configs', 'tools'):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    for name in ('pyproject.toml', 'setup.py', 'README.md', 'LICENSE'):
        shutil.copy(REPO_ROOT / name, source / name)
    pip = [sys.executable, '-m', 'pip']
    build = subprocess.run([*pip, 'wheel', '--quiet', '--no-deps', '--no-build-isolation', '--wheel-dir',
                            str(tmp_path / 'dist'), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = (tmp_path / 'dist').glob('effidense-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    configs = {f'plugin/.mim/configs/{p.relative_to(REPO_ROOT / "configs").as_posix()}'
               for p in (REPO_ROOT / 'configs').rglob('*.py')}
    assert configs and configs <= shipped, sorted(configs - shipped)
    assert {'plugin/.mim/model-index.yml', 'plugin/.mim/tools/train.py', 'plugin/.mim/tools/search_sparsity.py'} \
        <= shipped

    target = tmp_path / 'site'
    install = subprocess.run([*pip, 'install', '--quiet', '--no-deps', '--target', str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    user = tmp_path / 'user'
    user.mkdir()
    # The stack comes from this interpreter's site-packages; of this project only the wheel is importable.
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', INSTALLED_PROBE, str(target)], capture_output=True, text=True,
                            env=env, cwd=user, timeout=300)
    assert result.returncode == 0 and result.stdout.splitlines()[-1:] == [f'ok {__version__}'], \
        result.stdout[-3000:] + result.stderr[-5000:]


def readme_references() -> tuple:
    """Relative link targets, and the repository paths and tools named in the README's command blocks."""
    text = (REPO_ROOT / 'README.md').read_text()
    links = [target.split('#')[0] for target in re.findall(r'\]\(([^)\s]+)\)', text)
             if '://' not in target and not target.startswith('#')]
    blocks = re.findall(r'```(?:bash|sh)\n(.*?)```', text, flags=re.S)
    paths = [word for block in blocks for word in re.findall(r'(?<![\w/.$-])((?:tools|configs|docs)/[\w./-]+)', block)]
    return links, paths


def test_readme_links_and_commands_refer_to_files_that_exist():
    links, paths = readme_references()
    assert links and paths
    missing = sorted({p for p in links + paths if not (REPO_ROOT / p.rstrip('.,:;')).exists()})
    assert not missing, f'README.md refers to files that do not exist: {missing}'
    assert len((REPO_ROOT / 'README.md').read_text().splitlines()) < 300
