"""How a sparse dense head marks the positions (anchors, points) of skipped tiles, and how its loss ignores them.

A head's forward gives a skipped position the classification logit ``-inf`` (an exported model drops
those), so the loss finds them in its own input. mmdet's and mmdet3d's heads build their training
targets inside ``loss_by_feat`` (``get_anchors``, ``get_targets``) with no argument for positions to
leave out: ``loss_by_feat`` opens :func:`only_computed_positions` around the library's code, and the
head's ``get_anchors``/``get_targets`` read :func:`computed_positions_in_scope`.
"""
import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch

SKIPPED_LOGIT = float('-inf')
# A finite logit whose sigmoid is 0 in float16 and float32: the focal and cross-entropy losses of a background
# target are then exactly 0 with zero gradient (at -inf they are NaN).
IGNORED_LOGIT = -1e4

_COMPUTED: contextvars.ContextVar[tuple[torch.Tensor, ...] | None] = contextvars.ContextVar(
    'effidense_computed_positions', default=None)


def computed_positions(cls_score: torch.Tensor, channels_per_position: int) -> torch.Tensor:
    """``(B, H * W * P)`` True for each computed position of ``cls_score`` ``(B, P * channels_per_position, H, W)``,
    in mmdet's order of flattened priors (row, column, prior)."""
    batch = cls_score.shape[0]
    skipped = torch.isneginf(cls_score).permute(0, 2, 3, 1).reshape(batch, -1, channels_per_position)
    return ~skipped.all(-1)


def finite_logits(cls_scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``cls_scores`` with the skipped positions' ``-inf`` replaced by ``IGNORED_LOGIT`` (the losses take no -inf)."""
    return [score.masked_fill(torch.isneginf(score), IGNORED_LOGIT) for score in cls_scores]


@contextlib.contextmanager
def only_computed_positions(computed: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside the block, :func:`computed_positions_in_scope` gives ``computed`` (one ``(B, positions)`` mask per
    level)."""
    token = _COMPUTED.set(tuple(computed))
    try:
        yield
    finally:
        _COMPUTED.reset(token)


def computed_positions_in_scope() -> tuple[torch.Tensor, ...] | None:
    """The masks of the innermost :func:`only_computed_positions` block; None outside any."""
    return _COMPUTED.get()
