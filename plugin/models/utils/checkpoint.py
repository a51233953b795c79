"""Checkpoint reading and loading: one module, one policy, for every backbone and tool.

Reading (:func:`read_checkpoint`): local files with torch's weights-only
unpickler (``import plugin`` allow-lists the types mmengine's runner writes, see
:mod:`plugin.utils.safe_globals`), ``.safetensors`` files, and URLs or
``open-mmlab://``-style names through mmengine's ``CheckpointLoader``.

Loading (:func:`load_checked`): a checkpoint must fit the module it is loaded
into. Missing keys, unexpected keys and shape mismatches raise
:class:`CheckpointMismatchError`, which names them and the key prefixes the file
holds (``img_backbone.``, ``neck.``, ...), so a wrong ``prefix`` or a checkpoint
of another architecture is caught before training starts from random weights.
Keys a module declares optional (output norms a classification checkpoint does
not have, a predictor a dense checkpoint lacks) stay at their initialisation.
``allow_partial=True`` loads what fits and logs the rest instead of raising.

Initialisation (:func:`init_backbone_weights`): the one rule of every backbone.
"""
import abc
import pickle
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model.weight_init import initialize
from mmengine.runner.checkpoint import CheckpointLoader

StateDict = dict[str, torch.Tensor]
InitCfg = dict | Sequence[dict] | None

# The keys of a Pretrained init_cfg: mmengine's, plus allow_partial (this module's policy switch).
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location', 'allow_partial')
SHOWN_KEYS = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the module it is loaded into; the keys are kept as attributes."""

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)

    @property
    def num_differences(self) -> int:
        """How far the checkpoint is from fitting (tools/convert_checkpoint.py names the nearest architecture)."""
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)


def read_checkpoint(path: str) -> dict:
    """The object stored in a checkpoint file or URL, on the CPU.

    Local files are read with ``weights_only=True`` whatever torch's default;
    a file holding Python objects that are not allow-listed raises an
    ``UnpicklingError`` that says which and how to allow them.
    """
    path = str(path)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    if not Path(path).is_file():
        if '://' not in path:
            raise FileNotFoundError(f'checkpoint {path} does not exist (give a file path or a URL)')
        return CheckpointLoader.load_checkpoint(path, map_location='cpu')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f'{path} holds Python objects that torch\'s weights-only loader refuses. `import plugin` allow-lists '
            f'those mmengine\'s runner writes; if you trust this file, allow the type named below with '
            f'torch.serialization.add_safe_globals([...]).\n{error}') from error


def checkpoint_state_dict(checkpoint: dict) -> StateDict:
    r"""The weights of a loaded checkpoint: its ``state_dict`` or ``model`` entry, or itself,
    without the ``module.`` prefix that (Distributed)DataParallel adds.

    mmengine's ``revise_keys=[(r'^module\.', '')]`` strips it from any key; here only when every key has it,
    so that a model whose own submodule is named ``module`` keeps its keys.
    """
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if checkpoint and all(key.startswith('module.') for key in checkpoint):
        checkpoint = OrderedDict((key[len('module.'):], value) for key, value in checkpoint.items())
    return checkpoint


def key_prefixes(state_dict: StateDict) -> str:
    """The first name of every key with its count, e.g. ``'backbone. (340), neck. (24)'``."""
    counts = Counter(key.split('.', 1)[0] + ('.' if '.' in key else '') for key in state_dict)
    return ', '.join(f'{prefix} ({count})' for prefix, count in counts.most_common())


def select_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """The entries under ``prefix`` (a trailing dot is implied), with it removed.

    mmengine's ``_load_checkpoint_with_prefix`` does this on a file it reads itself and fails with a bare
    assertion; this works on weights already read (weights-only) and names the prefixes the file has.
    """
    if not prefix.endswith('.'):
        prefix += '.'
    selected = OrderedDict((key[len(prefix):], value) for key, value in state_dict.items() if key.startswith(prefix))
    if not selected:
        raise CheckpointMismatchError(f'no key of the checkpoint starts with prefix {prefix!r}; its keys start '
                                      f'with: {key_prefixes(state_dict)}')
    return selected


def backbone_state_dict(checkpoint: dict, prefix: str | None = None) -> StateDict:
    """A backbone's weights in a checkpoint: the entries under ``prefix`` when it is given,
    else those under ``backbone.`` (a detector's or segmentor's checkpoint) if any, else all."""
    state_dict = checkpoint_state_dict(checkpoint)
    if prefix is not None:
        return select_prefix(state_dict, prefix)
    if any(key.startswith('backbone.') for key in state_dict):
        return select_prefix(state_dict, 'backbone.')
    return state_dict


@dataclass
class LoadReport:
    """What a load did, in ``load_state_dict``'s vocabulary: the module's keys left at their
    initialisation (optional ones, or skipped under ``allow_partial``), the checkpoint's keys not
    used, and the shape mismatches skipped."""
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _listing(name: str, keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:SHOWN_KEYS]) + (f', ... ({len(keys) - SHOWN_KEYS} more)' if len(keys) > SHOWN_KEYS else '')
    return f'\n  {len(keys)} {name}: {shown}'


def mismatch_message(target: str, source: str, missing: Sequence[str], unexpected: Sequence[str],
                     mismatched: Sequence[str], checkpoint_keys: StateDict, hint: str | None = None) -> str:
    """The text of a :class:`CheckpointMismatchError`."""
    message = f'{source} does not fit {target}:'
    for name, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                       ('shape mismatches', mismatched)):
        if keys:
            message += _listing(name, list(keys))
    message += f'\n  The checkpoint\'s keys start with: {key_prefixes(checkpoint_keys) or "(no keys)"}.'
    if hint:
        message += f'\n  {hint}'
    message += ('\n  Check the prefix (init_cfg prefix=...) and the architecture arguments; to load only what '
                'fits, pass allow_partial=True.')
    return message


def load_checked(module: nn.Module, state_dict: StateDict, source: str, *,
                 optional: Collection[str] = (), allow_partial: bool = False, hint: str | None = None,
                 target: str | None = None) -> LoadReport:
    """Load ``state_dict`` into ``module`` under the policy of this module (see the module docstring).

    Args:
        module: What to load into.
        state_dict: Its weights, already converted to its keys.
        source: The checkpoint's name, for messages.
        optional: Keys of ``module`` that may be absent from ``state_dict``.
        allow_partial: Load what fits and log the rest, instead of raising.
        hint: A line added to the error, e.g. which setting would fit the checkpoint.
        target: The module's description in messages (default: its class name).
    """
    own = module.state_dict()
    target = target or type(module).__name__
    missing = [key for key in own if key not in state_dict and key not in optional]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [f'{key} {tuple(value.shape)} (model: {tuple(own[key].shape)})'
                  for key, value in state_dict.items() if key in own and value.shape != own[key].shape]
    logger = MMLogger.get_current_instance()
    if (missing or unexpected or mismatched) and not allow_partial:
        raise CheckpointMismatchError(mismatch_message(target, source, missing, unexpected, mismatched,
                                                       state_dict, hint), missing, unexpected, mismatched)
    fitting = OrderedDict((key, value) for key, value in state_dict.items()
                          if key in own and value.shape == own[key].shape)
    module.load_state_dict(fitting, strict=False)
    report = LoadReport(missing_keys=[key for key in own if key not in fitting], unexpected_keys=unexpected,
                        mismatched=mismatched)
    if missing or unexpected or mismatched:
        logger.warning(f'{target} loaded {source} partially (allow_partial=True):'
                       + _listing('keys left at init', report.missing_keys)
                       + (_listing('unused keys', unexpected) if unexpected else '')
                       + (_listing('skipped shape mismatches', mismatched) if mismatched else ''))
    else:
        logger.info(f'{target} loaded {source}; left at init: {", ".join(report.missing_keys) or "none"}')
    return report


def load_model_checkpoint(model: nn.Module, checkpoint: str, allow_partial: bool = False) -> dict:
    """Load a whole model's checkpoint (a runner's ``.pth``, path or URL) into ``model``, under the
    same policy; returns the whole checkpoint (its ``meta`` holds e.g. the class names)."""
    loaded = read_checkpoint(checkpoint)
    load_checked(model, checkpoint_state_dict(loaded), checkpoint, allow_partial=allow_partial)
    return loaded


def pretrained_init_cfg(init_cfg: InitCfg) -> dict | None:
    """The ``Pretrained`` entry of ``init_cfg`` (a dict or a list of dicts), checked; None if there is none."""
    entries = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg or [])
    pretrained = [dict(entry) for entry in entries if entry.get('type') == 'Pretrained']
    if len(pretrained) > 1:
        raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one')
    if not pretrained:
        return None
    unknown = sorted(set(pretrained[0]) - set(PRETRAINED_KEYS))
    if unknown or not pretrained[0].get('checkpoint'):
        raise ValueError(f'a Pretrained init_cfg takes checkpoint (required) and optionally prefix, map_location '
                         f'and allow_partial; got {pretrained[0]}')
    return pretrained[0]


def init_backbone_weights(module: nn.Module, default_init: Callable[[], None],
                          load_pretrained: Callable[..., LoadReport]) -> None:
    """The initialisation rule of every backbone of this package.

    1. ``default_init()``, the architecture's own initialisation, always: whatever a
       checkpoint or an ``init_cfg`` leaves alone starts from it;
    2. a ``Pretrained`` entry of ``module.init_cfg`` is loaded by ``load_pretrained``
       (with its ``prefix`` and ``allow_partial``), which converts foreign layouts;
    3. every other entry (``TruncNormal``, ``Constant``, ...) is applied by mmengine.
    """
    default_init()
    init_cfg = getattr(module, 'init_cfg', None)
    pretrained = pretrained_init_cfg(init_cfg)
    if pretrained is not None:
        load_pretrained(pretrained['checkpoint'], prefix=pretrained.get('prefix'),
                        allow_partial=bool(pretrained.get('allow_partial', False)))
    entries = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg or [])
    others = [entry for entry in entries if entry.get('type') != 'Pretrained']
    if others:
        initialize(module, others)
    module._is_init = True


def absent_groups(own: StateDict, state_dict: StateDict, patterns: Sequence[str]) -> list[str]:
    """The keys of ``own`` in every group (a key regex) of which ``state_dict`` holds no key."""
    absent = [pattern for pattern in patterns if not any(re.search(pattern, key) for key in state_dict)]
    return [key for key in own if any(re.search(pattern, key) for pattern in absent)]


class PretrainedInitMixin(abc.ABC):
    """Checkpoint loading and ``init_weights`` of a ``BaseModule`` backbone (the mixin comes first in its bases).

    The backbone implements ``default_init()`` and ``checkpoint_filter_fn(state_dict)`` (a class that
    does not cannot be instantiated) and may set ``optional_key_groups``: regexes of key groups a
    checkpoint may lack as a whole (output norms a classification checkpoint has none of, predictors),
    which then stay at their initialisation.
    """
    optional_key_groups: tuple[str, ...] = ()

    @abc.abstractmethod
    def default_init(self) -> None:
        """The architecture's own initialisation (always applied first, see :func:`init_backbone_weights`)."""

    @abc.abstractmethod
    def checkpoint_filter_fn(self, state_dict: StateDict) -> StateDict:
        """A published checkpoint's weights (any layout the backbone supports) -> this backbone's keys (timm's
        convention); weights already in its layout pass through."""

    def init_weights(self) -> None:
        init_backbone_weights(self, self.default_init, self.load_pretrained)

    def load_pretrained(self, checkpoint: str, prefix: str | None = None, allow_partial: bool = False) -> LoadReport:
        """Load the backbone's weights from ``checkpoint`` (path or URL): the entries under ``prefix`` when
        given, else under ``backbone.`` when the file has any, else all, through ``checkpoint_filter_fn``.

        Weights that do not fit raise :class:`CheckpointMismatchError` unless ``allow_partial``.
        """
        state_dict = self.checkpoint_filter_fn(backbone_state_dict(read_checkpoint(checkpoint), prefix))
        optional = absent_groups(self.state_dict(), state_dict, self.optional_key_groups)
        return load_checked(self, state_dict, checkpoint, optional=optional, allow_partial=allow_partial,
                            hint=self.checkpoint_mismatch_hint(state_dict), target=self.checkpoint_target())

    def checkpoint_mismatch_hint(self, state_dict: StateDict) -> str | None:
        """A line for the mismatch error saying which setting would fit ``state_dict``, or None."""
        return None

    def checkpoint_target(self) -> str:
        """How mismatch errors name this backbone."""
        return type(self).__name__
