"""The package as a released library: `pip install .` gives a working `import plugin`, every import is declared,
and the README points only at files and tools that exist."""
import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_pip_install_gives_a_working_plugin(tmp_path):
    # A copy of what the source distribution holds, so that the build leaves nothing in the repository.
    source = tmp_path / 'source'
    shutil.copytree(REPO_ROOT / 'plugin', source / 'plugin', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'setup.py', 'README.md', 'LICENSE'):
        shutil.copy(REPO_ROOT / name, source / name)
    target = tmp_path / 'site'
    build = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation',
                            '--target', str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    probe = '''
import importlib.metadata, sys
import plugin
from mmengine.registry import HOOKS, MODELS
assert plugin.__file__.startswith(sys.argv[1]), plugin.__file__
assert importlib.metadata.version('effidense') == plugin.__version__
for name in ('SparseViTSwin', 'EfficientFormer', 'EfficientFormerV2', 'EfficientFormerSupernet', 'DynamicViT'):
    assert MODELS.get(name) is not None, name
assert HOOKS.get('SparsityAwareAdaptationHook') is not None
print('ok', plugin.__version__)
'''
    env = dict(os.environ, PYTHONPATH=str(target))
    # Run from elsewhere, so that the repository itself is not importable.
    result = subprocess.run([sys.executable, '-c', probe, str(target)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith('ok'), result.stdout + result.stderr[-3000:]


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
