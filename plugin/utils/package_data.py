"""The project's configs and tools as the installed package ships them, and the ``effidense::`` config scope.

Like mmdet (``mmdet/.mim/configs``, ``mmdet/.mim/tools``), the package carries the repository's ``configs/``
and ``tools/`` in ``plugin/.mim/``: in a clone and in an editable install these are links to the top-level
folders, in a wheel copies of them. ``import plugin`` registers the scope, after which a config inherits a
shipped one by its package path, exactly as it inherits mmdet's::

    _base_ = ['effidense::sparsevit/mask-rcnn_sparsevit-swin-t-p4-w7_fpn_amp-ms-crop-3x_coco-672_cfg2.py']
"""
from importlib.resources import files
from pathlib import Path

from mmengine.config.utils import MODULE2PACKAGE

CONFIG_SCOPE = 'effidense'
MIM_DIR = Path(str(files('plugin'))) / '.mim'
CONFIG_ROOT = MIM_DIR / 'configs'
TOOLS_DIR = MIM_DIR / 'tools'


def register_config_scope() -> None:
    """Let mmengine resolve ``effidense::<folder>/<config>.py`` to ``plugin/.mim/configs/<folder>/<config>.py``.

    mmengine maps a scope to a distribution and looks for ``<its location>/<name>``, which an editable install
    does not have (the code stays in the clone); given the import name, it asks importlib where the package is
    imported from, which holds for a wheel, an editable install and a clone alike.
    """
    MODULE2PACKAGE[CONFIG_SCOPE] = 'plugin'


def _shipped(folder: Path, relative: str, kind: str) -> Path:
    path = folder / relative
    if not path.is_file():
        choices = sorted(str(p.relative_to(folder)) for p in folder.rglob('*.py') if '_base_' not in p.parts)
        raise FileNotFoundError(f'the package ships no {kind} {relative!r} (in {folder}); it ships {choices}')
    return path


def config_path(relative: str) -> Path:
    """A shipped config by its path under ``configs/``, e.g. ``'demo/mask-rcnn_sparsevit-swin-mini_demo-shapes.py'``."""
    return _shipped(CONFIG_ROOT, relative, 'config')


def tool_path(name: str) -> Path:
    """A shipped command-line tool by its file name, e.g. ``'search_sparsity.py'``."""
    return _shipped(TOOLS_DIR, name, 'tool')
