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
from typing import NamedTuple

import torch

from .export_mode import is_exporting

# The value mmdet's and the original Swin's shifted-window attention add between
# tokens of different regions; kept so that outputs match them.
SHIFT_MASK_VALUE = -100.0


class WindowGrid(NamedTuple):
    """One window partition of a stage's padded feature map.

    token_index: ``(nW, N)`` positions in the flat padded grid (``Hp * Wp``).
    attn_mask: ``(nW, N, Np)`` additive mask between tokens of one window that
        came from different regions of the cyclic shift, its rows zero-padded to
        ``Np`` columns (``pad_to_mask_alignment``); ``None`` without shift.
    valid: ``(nW, N)`` True for tokens inside the unpadded map; ``None`` when
        the map needed no padding.
    """
    token_index: torch.Tensor
    attn_mask: torch.Tensor | None
    valid: torch.Tensor | None

    def all_windows_attn_mask(self) -> torch.Tensor | None:
        """``attn_mask`` as a block running every window takes it: ``(1, nW, N, Np)``, or None."""
        return None if self.attn_mask is None else self.attn_mask.unsqueeze(0)


def padded_shape(hw_shape: tuple[int, int], window_size: int) -> tuple[int, int]:
    """Height and width rounded up to multiples of the window size."""
    H, W = hw_shape
    # Positive operands: the TorchScript ONNX exporter folds floor division of a negative value as truncation.
    return (H + window_size - 1) // window_size * window_size, (W + window_size - 1) // window_size * window_size


def _partition(grid: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(Hp, Wp)`` -> ``(nW, window_size**2)`` in Swin's window order."""
    Hp, Wp = grid.shape
    grid = grid.view(Hp // window_size, window_size, Wp // window_size, window_size)
    return grid.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)


# Cached per input size: in eager mode the tables cost a dozen small kernels per
# stage, which a GPU at batch 1 would spend launching (torch.compile traces through).
@functools.lru_cache(maxsize=64)
def build_window_grid(hw_shape: tuple[int, int], window_size: int, shift_size: int,
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
        attn_mask = pad_to_mask_alignment(
            torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE))

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


def windows_by_score(scores: torch.Tensor) -> torch.Tensor:
    """``(B, nW)`` window indices per image, highest score first (a block keeps a prefix).

    Equal scores rank by window index: windows of an image's zero padding score exactly alike, and ``topk``'s
    order of ties is its kernel's, so an exported model would keep other padding windows than PyTorch. Eager
    ranking is a stable sort; an export keeps ``topk``, which ONNX writes as ``TopK`` (ties by index, as the ONNX
    operator specifies; torch.onnx has no translation of a stable sort).
    """
    if is_exporting():
        return scores.topk(scores.shape[1], dim=1).indices
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def batched_token_positions(window_tokens: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Flat buffer rows of ``(B, k, N)`` per-image positions, for ``index_select``/``index_copy_``."""
    batch = window_tokens.shape[0]
    offsets = torch.arange(batch, device=window_tokens.device) * tokens_per_image
    return (window_tokens + offsets.view(batch, 1, 1)).reshape(-1)


def _word_view(rows: torch.Tensor) -> torch.Tensor | None:
    """``rows`` ``(R, C)`` reinterpreted as 8-byte words, when that is exact, no gradient is needed and
    the model is not being exported.

    Index kernels move one element per thread: moving a 96-channel fp16 row as 24
    words instead of 96 halves is 2x faster on a GPU. ``view(dtype)`` has no
    gradient, so training keeps the element-wise path; ONNX has no bit-reinterpreting
    operator, so an exported graph keeps it too.
    """
    row_bytes = rows.shape[1] * rows.element_size()
    if rows.requires_grad and torch.is_grad_enabled() or row_bytes % 8 or not rows.is_contiguous() \
            or is_exporting():
        return None
    return rows.view(torch.int64)


def gather_rows(buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``buffer[rows]`` for a flat token buffer ``(R, C)``."""
    words = _word_view(buffer)
    return buffer.index_select(0, rows) if words is None else words.index_select(0, rows).view(buffer.dtype)


def scatter_rows_(buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """``buffer[rows] = values`` in place."""
    values = values.to(buffer.dtype)
    buffer_words, value_words = _word_view(buffer), _word_view(values.contiguous())
    if buffer_words is None or value_words is None:
        buffer.index_copy_(0, rows, values)
    else:
        buffer_words.index_copy_(0, rows, value_words)


# SDPA's fused kernels read an additive mask without copying it only when every
# stride but the last is a multiple of this many elements.
ATTENTION_MASK_ALIGNMENT = 16


def pad_to_mask_alignment(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with its last dimension zero-padded to a multiple of ``ATTENTION_MASK_ALIGNMENT``.

    Swin windows have 49 tokens; sliced back to 49 columns, a mask computed in
    this layout reaches the memory-efficient kernel without the copy that an
    unpadded ``(.., 49, 49)`` mask costs on every call.
    """
    return torch.nn.functional.pad(mask, (0, -mask.shape[-1] % ATTENTION_MASK_ALIGNMENT))
