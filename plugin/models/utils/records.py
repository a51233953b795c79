"""What a sparse backbone ran in one forward pass, returned as a value: the forward record.

``backbone.forward_with_record(x)`` returns ``(features, record)``; ``backbone(x)`` returns the
features as mmdet expects. Nothing is left on the modules: whoever needs a record (the detectors'
backbone losses, :class:`~plugin.engine.ObjectCoverageHook`, the pictures, a sparse neck) either
calls ``forward_with_record`` or collects the records of the passes it wraps with :func:`recording`::

    with recording() as records:
        results = detector.test_step(data)
    record = records[0]  # one per backbone forward inside the block, in call order

SparseViT's windows and DynamicViT's tokens take one form: a token is a 1x1 window on the
stride-16 grid, a pruning location a block.
"""
import abc
import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class BlockRecord:
    """What one block (one DynamicViT pruning location) ran.

    kept: ``(B, k)`` indices of the windows (tokens) of its grid whose output it used, per image;
        None when it used every one.
    num_windows: Windows (tokens) of its grid.
    shift_size: The cyclic shift of its window grid in tokens; 0 for the regular grid.
    ratio: Its pruning ratio; it keeps ``floor((1 - ratio) * num_windows)`` windows (DynamicViT:
        ``1 - keep ratio`` of the location).
    kept_fraction: ``(B,)`` differentiable kept fraction of a learned decision in training, where
        every window runs and the decision mixes output and input; None otherwise.
    """
    kept: torch.Tensor | None
    num_windows: int
    shift_size: int
    ratio: float
    kept_fraction: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class KeptTiles:
    """The tiles (windows) of a feature map that its backbone stage computed, per image.

    The map of ``feature_shape`` (H, W) is covered by square tiles of ``tile_size`` pixels, the last
    row and column cut at the border; ``index`` ``(B, k)`` numbers them row-major over that grid
    (Swin's window order).
    """
    index: torch.Tensor
    tile_size: int
    feature_shape: tuple[int, int]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Tiles per column and per row."""
        height, width = self.feature_shape
        return -(-height // self.tile_size), -(-width // self.tile_size)

    @property
    def num_tiles(self) -> int:
        rows, cols = self.grid_shape
        return rows * cols

    @property
    def kept_fraction(self) -> float:
        """Share of the tiles kept (the same for every image)."""
        return self.index.shape[1] / self.num_tiles

    def tile_mask(self) -> torch.Tensor:
        """``(B, rows, cols)`` True on kept tiles."""
        batch = self.index.shape[0]
        mask = torch.zeros(batch, self.num_tiles, dtype=torch.bool, device=self.index.device)
        mask.scatter_(1, self.index, True)
        return mask.view(batch, *self.grid_shape)

    def mask(self) -> torch.Tensor:
        """``(B, H, W)`` True on the feature pixels of kept tiles."""
        tiles = self.tile_mask()
        pixels = tiles.repeat_interleave(self.tile_size, 1).repeat_interleave(self.tile_size, 2)
        return pixels[:, :self.feature_shape[0], :self.feature_shape[1]]


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """One stage of a forward pass: its map, its windows and what each block ran.

    hw_shape: Tokens per column and row of the stage's map (before any padding to whole windows).
    window_size: Tokens per window side (1: DynamicViT's tokens).
    stride: Input pixels per token side.
    """
    hw_shape: tuple[int, int]
    window_size: int
    stride: int
    blocks: tuple[BlockRecord, ...]

    def kept_tiles(self) -> KeptTiles | None:
        """The windows of the regular grid that the stage computed, as tiles of its map; None when it computed all.

        These are the windows of its first pruned block on the regular (unshifted) grid: blocks keep
        nested prefixes of one ranking per grid, so this is the union over the stage's regular-grid
        blocks, and the shifted blocks ran a ranking of the same activations between them.
        """
        first_pruned = next((block for block in self.blocks if block.shift_size == 0 and block.kept is not None), None)
        if first_pruned is None:
            return None
        return KeptTiles(first_pruned.kept, self.window_size, self.hw_shape)


@dataclasses.dataclass(frozen=True)
class ForwardRecord:
    """What a sparse backbone ran for one input batch of ``input_shape`` (H, W) pixels."""
    input_shape: tuple[int, int]
    stages: tuple[StageRecord, ...]

    def keep_ratio_terms(self) -> tuple[list[torch.Tensor], list[float]]:
        """The kept fractions of the learned decisions and their targets (1 - ratio), block by block."""
        blocks = [block for stage in self.stages for block in stage.blocks if block.kept_fraction is not None]
        return [block.kept_fraction for block in blocks], [1.0 - block.ratio for block in blocks]

    def kept_tiles(self, stages: tuple[int, ...]) -> tuple[KeptTiles | None, ...]:
        """:meth:`StageRecord.kept_tiles` of each of ``stages`` (e.g. the backbone's ``out_indices``)."""
        return tuple(self.stages[stage].kept_tiles() for stage in stages)


# The lists of the recording scopes open in this context, outermost first.
_OPEN_SCOPES: contextvars.ContextVar[tuple[list[ForwardRecord], ...]] = contextvars.ContextVar(
    'effidense_recording_scopes', default=())


class RecordingScope:
    """An open :func:`recording` scope for code that cannot wrap the forward passes in a ``with`` block
    (a hook that starts before an iteration and reads after it). ``close()`` ends it, in any order."""

    def __init__(self) -> None:
        self.records: list[ForwardRecord] = []
        _OPEN_SCOPES.set(_OPEN_SCOPES.get() + (self.records, ))

    def close(self) -> list[ForwardRecord]:
        """End the scope; returns its records."""
        _OPEN_SCOPES.set(tuple(scope for scope in _OPEN_SCOPES.get() if scope is not self.records))
        return self.records


@contextlib.contextmanager
def recording() -> Iterator[list[ForwardRecord]]:
    """Collect the record of every sparse-backbone forward pass run inside the block, in call order.

    Scopes nest: each open scope receives every record made while it is open.
    """
    scope = RecordingScope()
    try:
        yield scope.records
    finally:
        scope.close()


def hand_to_open_scopes(record: ForwardRecord) -> None:
    """Give ``record`` to every open :func:`recording` scope (a backbone's forward calls this; no-op without)."""
    for records in _OPEN_SCOPES.get():
        records.append(record)


class RecordingBackbone(abc.ABC):
    """The contract of a backbone that records its forward passes (a base placed before ``BaseModule``).

    ``forward(x)`` returns the features, ``forward_with_record(x)`` the features and the pass's
    :class:`ForwardRecord`; both hand the record to the open :func:`recording` scopes. A subclass
    implements the pass itself in ``_forward_with_record`` and its training losses from a record in
    ``auxiliary_losses`` (the detectors of :mod:`plugin.models.detectors` add them to the task losses).
    """

    @abc.abstractmethod
    def _forward_with_record(self, x: torch.Tensor) -> tuple[Sequence[torch.Tensor], ForwardRecord]:
        """Images ``(B, C, H, W)`` -> (the feature maps, the record of this pass)."""

    @abc.abstractmethod
    def auxiliary_losses(self, record: ForwardRecord) -> dict[str, torch.Tensor]:
        """The backbone's own losses of the training pass that made ``record`` ({} if it has none)."""

    def forward_with_record(self, x: torch.Tensor) -> tuple[Sequence[torch.Tensor], ForwardRecord]:
        features, record = self._forward_with_record(x)
        hand_to_open_scopes(record)
        return features, record

    def forward(self, x: torch.Tensor) -> Sequence[torch.Tensor]:
        return self.forward_with_record(x)[0]
