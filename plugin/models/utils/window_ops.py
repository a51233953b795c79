"""Window geometry, scoring and token gather/scatter shared by the window-sparse backbones.

A stage keeps its feature map as one flat token buffer of the *padded* grid,
``(B * Hp * Wp, C)``. Instead of padding, rolling, partitioning and reversing the
whole map in every block, each window grid (regular or cyclically shifted) is
described once per stage by an index table: window ``w``, token ``n`` -> position
in the padded grid, with the cyclic shift folded in. A block then gathers exactly
the tokens of the windows it runs and writes its results back in place, so its
cost follows the number of windows it keeps.
"""
import functools
from typing import NamedTuple, Optional, Tuple

import torch

# The value mmdet's and the original Swin's shifted-window attention add between
# tokens of different regions; kept so that outputs match them.
SHIFT_MASK_VALUE = -100.0


class WindowGrid(NamedTuple):
    """One window partition of a stage's padded feature map.

    token_index: ``(nW, N)`` positions in the flat padded grid (``Hp * Wp``).
    attn_mask: ``(nW, N, N)`` additive mask between tokens of one window that
        came from different regions of the cyclic shift; ``None`` without shift.
    valid: ``(nW, N)`` True for tokens inside the unpadded map; ``None`` when
        the map needed no padding.
    """
    token_index: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    valid: Optional[torch.Tensor]


def padded_shape(hw_shape: Tuple[int, int], window_size: int) -> Tuple[int, int]:
    """Height and width rounded up to multiples of the window size."""
    H, W = hw_shape
    return -(-H // window_size) * window_size, -(-W // window_size) * window_size


def _partition(grid: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(Hp, Wp)`` -> ``(nW, window_size**2)`` in Swin's window order."""
    Hp, Wp = grid.shape
    grid = grid.view(Hp // window_size, window_size, Wp // window_size, window_size)
    return grid.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)


# Cached per input size: in eager mode the tables cost a dozen small kernels per
# stage, which a GPU at batch 1 would spend launching (torch.compile traces through).
@functools.lru_cache(maxsize=64)
def build_window_grid(hw_shape: Tuple[int, int], window_size: int, shift_size: int,
                      device: torch.device) -> WindowGrid:
    """Index table, shift mask and padding mask of one window grid (read-only, cached).

    Equivalent to ``roll(pad(x), -shift)`` followed by window partition, but
    expressed as indices so no block has to move the whole map.
    """
    H, W = hw_shape
    Hp, Wp = padded_shape(hw_shape, window_size)
    rows = torch.arange(Hp, device=device)
    cols = torch.arange(Wp, device=device)
    # Position of the token that a cyclic shift by -shift_size brings to (i, j).
    src_rows = (rows + shift_size) % Hp
    src_cols = (cols + shift_size) % Wp
    positions = src_rows[:, None] * Wp + src_cols[None, :]
    token_index = _partition(positions, window_size)

    attn_mask = None
    if shift_size > 0:
        # Swin's three regions per axis of the shifted map, as labels 0..8.
        def region(length: int) -> torch.Tensor:
            coords = torch.arange(length, device=device)
            return (coords >= length - window_size).long() + (coords >= length - shift_size).long()

        labels = _partition(region(Hp)[:, None] * 3 + region(Wp)[None, :], window_size)
        different = labels[:, :, None] != labels[:, None, :]
        attn_mask = torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)

    valid = None
    if (Hp, Wp) != (H, W):
        inside = (src_rows[:, None] < H) & (src_cols[None, :] < W)
        valid = _partition(inside, window_size)
    return WindowGrid(token_index, attn_mask, valid)


def window_l2_scores(token_activity: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """SparseViT's window importance: L2 norm over a window of per-token activity.

    token_activity: ``(B, Hp * Wp)`` mean absolute activation per token (zero on padding).
    Returns ``(B, nW)``.
    """
    return torch.linalg.vector_norm(token_activity[:, token_index], ord=2, dim=-1)


def batched_token_positions(window_tokens: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Flat buffer rows of ``(B, k, N)`` per-image positions, for ``index_select``/``index_copy_``."""
    batch = window_tokens.shape[0]
    offsets = torch.arange(batch, device=window_tokens.device) * tokens_per_image
    return (window_tokens + offsets.view(batch, 1, 1)).reshape(-1)
