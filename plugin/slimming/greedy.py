"""Greedy latency-driven slimming of an EfficientFormer supernet (the paper's Sec. 4.3).

From the full supernet, each step takes the one action with the smallest
importance lost per millisecond saved, among: replace the least important 4D
MetaPath with identity, remove the first remaining 3D MetaPath, shrink the
least important stage's width to the next smaller candidate. It stops once the
predicted latency is at or under the budget.
"""
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..models.backbones.efficientformer import conv_block_counts, stage_depths
from .latency import predict_latency, subnet_entries


@dataclass
class SubNetwork:
    """Which MetaPaths keep their block and which width each stage uses."""
    width_choices: list[list[int]]
    conv_keep: list[list[bool]]
    vit_keep: list[bool]
    width_index: list[int]

    @classmethod
    def full(cls, space: dict) -> 'SubNetwork':
        num_vit = space['num_vit']
        num_conv = conv_block_counts(space['depths'], num_vit)
        choices = [sorted(widths) for widths in space['width_choices']]
        return cls(choices, [[True] * n for n in num_conv], [True] * num_vit, [len(w) - 1 for w in choices])

    @property
    def embed_dims(self) -> list[int]:
        return [widths[i] for widths, i in zip(self.width_choices, self.width_index)]

    def entries(self, input_size: Sequence[int]) -> list[str]:
        """Its lookup-table keys."""
        return subnet_entries(self.embed_dims, [sum(keep) for keep in self.conv_keep], sum(self.vit_keep),
                              input_size)

    def config(self) -> dict:
        """``EfficientFormer`` arguments: ``embed_dims``, ``depths`` and ``num_vit``."""
        num_vit = sum(self.vit_keep)
        return dict(embed_dims=self.embed_dims, depths=stage_depths([sum(keep) for keep in self.conv_keep], num_vit),
                    num_vit=num_vit)


@dataclass
class SlimmingStep:
    """One applied action: what it changed, the importance it cost and the predicted latency after it."""
    action: str
    target: tuple[int, ...]
    importance_drop: float
    saved_ms: float
    latency_ms: float
    config: dict = field(default_factory=dict)

    def describe(self) -> str:
        where = {'drop_block': 'stage {} 4D MetaPath {} -> identity',
                 'drop_vit': 'last stage 3D MetaPath {} removed',
                 'shrink_width': 'stage {} width {} -> {}'}[self.action].format(*self.target)
        return (f'{where:<36} importance -{self.importance_drop:.3f}, saves {self.saved_ms:.3f} ms, '
                f'predicted {self.latency_ms:.3f} ms')


def _candidate_actions(net: SubNetwork, importance: dict) -> list[tuple[str, tuple, float, SubNetwork]]:
    """The three actions the paper allows, each as (action, target, importance drop, resulting net)."""
    actions = []
    kept_paths = [(importance['conv_paths'][s][b], s, b) for s, keep in enumerate(net.conv_keep)
                  for b, kept in enumerate(keep) if kept]
    if kept_paths:
        score, stage, block = min(kept_paths)
        slimmer = copy.deepcopy(net)
        slimmer.conv_keep[stage][block] = False
        actions.append(('drop_block', (stage, block), score, slimmer))
    if any(net.vit_keep):
        first = net.vit_keep.index(True)
        slimmer = copy.deepcopy(net)
        slimmer.vit_keep[first] = False
        actions.append(('drop_vit', (first,), importance['vit_paths'][first], slimmer))
    shrinkable = [(importance['widths'][s][i], s) for s, i in enumerate(net.width_index) if i > 0]
    if shrinkable:
        score, stage = min(shrinkable)
        slimmer = copy.deepcopy(net)
        slimmer.width_index[stage] -= 1
        widths = net.width_choices[stage]
        target = (stage, widths[net.width_index[stage]], widths[slimmer.width_index[stage]])
        actions.append(('shrink_width', target, score, slimmer))
    return actions


def check_importance(space: dict, importance: dict) -> None:
    """ValueError unless ``importance`` (``EfficientFormerSupernet.importance()``) fits ``space``."""
    full = SubNetwork.full(space)
    expected = ([len(keep) for keep in full.conv_keep], len(full.vit_keep), [len(w) for w in full.width_choices])
    found = ([len(s) for s in importance['conv_paths']], len(importance['vit_paths']),
             [len(w) for w in importance['widths']])
    if expected != found:
        raise ValueError(f'importance scores (4D paths per stage, 3D paths, widths per stage) {found} do not '
                         f'fit the lookup table\'s search space {expected}')


def slim(lut: dict, importance: dict, budget_ms: float,
         start: SubNetwork | None = None) -> tuple[SubNetwork, list[SlimmingStep]]:
    """Greedily slim the supernet of ``lut['space']`` until its predicted latency is <= ``budget_ms``.

    Args:
        lut: A lookup table from :func:`build_latency_lut`.
        importance: ``EfficientFormerSupernet.importance()`` of the trained supernet.
        budget_ms: Latency budget in milliseconds.
        start: Sub-network to start from; the full supernet by default.

    Returns:
        The slimmed sub-network and the steps taken (each block is removed at most once).
    """
    if budget_ms <= 0:
        raise ValueError(f'budget_ms must be positive, got {budget_ms}')
    space, input_size = lut['space'], lut['input_size']
    check_importance(space, importance)
    net = start or SubNetwork.full(space)
    latency = predict_latency(lut, net.entries(input_size))
    steps = []
    while latency > budget_ms:
        options = []
        for action, target, drop, slimmer in _candidate_actions(net, importance):
            slimmer_latency = predict_latency(lut, slimmer.entries(input_size))
            saved = latency - slimmer_latency
            # An action that saves nothing cannot bring the network closer to the budget.
            if saved > 0:
                options.append((drop / saved, -saved, len(options), action, target, drop, slimmer, slimmer_latency))
        if not options:
            raise ValueError(f'budget {budget_ms} ms is unreachable: the smallest sub-network found is predicted '
                             f'at {latency:.3f} ms on {lut["device"]}')
        *_, action, target, drop, net, slimmer_latency = min(options)
        steps.append(SlimmingStep(action, target, drop, latency - slimmer_latency, slimmer_latency, net.config()))
        latency = slimmer_latency
    return net, steps


def write_config(path: str, config: dict, comment: Sequence[str] = ()) -> None:
    """Write an mmengine config fragment that builds ``EfficientFormer(**config)`` as ``model.backbone``."""
    backbone = ', '.join(f'{key}={value!r}' for key, value in dict(type='EfficientFormer', **config).items())
    lines = [f'# {line}' for line in comment]
    lines += ["custom_imports = dict(imports=['plugin'], allow_failed_imports=False)",
              f'model = dict(backbone=dict({backbone}))', '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
