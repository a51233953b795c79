"""DynamicViT's prediction module and keep-ratio loss, shared by DynamicViT and SparseViTSwin's learned scorer,
and the nested training decisions of the learned window scorer."""
import math
from collections.abc import Sequence

import torch
import torch.nn as nn


class TokenKeepPredictor(nn.Module):
    """The paper's prediction module: per token, log-probabilities of (keep, drop).

    Each token's local feature (first half of the channels after an MLP) is joined
    with a global feature (the second half, averaged over the tokens still kept),
    and a second MLP scores the pair. Submodule names and layout are the authors',
    so the predictor weights of their ImageNet checkpoints load by name.
    """

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(embed_dims), nn.Linear(embed_dims, embed_dims), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(embed_dims, embed_dims // 2), nn.GELU(),
            nn.Linear(embed_dims // 2, embed_dims // 4), nn.GELU(),
            nn.Linear(embed_dims // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, tokens: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """tokens ``(B, N, C)``, policy ``(B, N, 1)`` (1 = still kept) -> ``(B, N, 2)``."""
        x = self.in_conv(tokens)
        half = x.shape[-1] // 2
        local_features, global_features = x[..., :half], x[..., half:]
        # At least one, so an image that dropped every token gets a zero global feature, not NaN.
        num_kept = policy.sum(1, keepdim=True).clamp_min(1.)
        global_features = (global_features * policy).sum(1, keepdim=True) / num_kept
        global_features = global_features.expand(-1, local_features.shape[1], -1)
        return self.out_conv(torch.cat([local_features, global_features], dim=-1))


def keep_ratio_loss(kept_fractions: Sequence[torch.Tensor], targets: Sequence[float]) -> torch.Tensor:
    """The paper's ratio loss: per pruning stage, the mean over images of (kept fraction - target)^2.

    Averaged over stages. kept_fractions: per stage a ``(B,)`` tensor, each image's kept fraction of the grid.
    """
    if len(kept_fractions) != len(targets) or not targets:
        raise ValueError(f'keep_ratio_loss needs one kept-fraction tensor per target, got '
                         f'{len(kept_fractions)} tensors for {len(targets)} targets')
    return torch.stack([((fraction - target)**2).mean() for fraction, target in zip(kept_fractions, targets)]).mean()


def sample_logistic_noise(scores: torch.Tensor) -> torch.Tensor:
    """Logistic noise shaped like ``scores``: the difference of the two Gumbel samples that a
    two-class hard Gumbel-Softmax adds to (keep, drop) logits."""
    uniform = torch.rand_like(scores).clamp(1e-6, 1 - 1e-6)
    return uniform.log() - torch.log1p(-uniform)


def nested_keep_decisions(scores: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Hard keep decisions ``(B, n)``, straight-through: keep where ``scores + logit(keep_fraction) > 0``.

    ``scores`` are one ranking's perturbed keep log-odds (predictor + noise), shared by the
    blocks of a stage: a block keeps a prefix of that ranking, a smaller ``keep_fraction``
    a shorter one, so a window a block drops stays dropped. With log-odds near 0 the
    expected kept fraction is ``keep_fraction``; the keep-ratio loss holds it there. The
    gradient is that of ``sigmoid(scores + logit(keep_fraction))``, as hard Gumbel-Softmax.
    """
    if not 0 < keep_fraction < 1:
        raise ValueError(f'keep_fraction must lie in (0, 1), got {keep_fraction}')
    logits = scores + math.log(keep_fraction / (1 - keep_fraction))
    soft = torch.sigmoid(logits)
    # Parenthesised so that the forward value is exactly 0 or 1.
    return (logits > 0).to(soft.dtype) + (soft - soft.detach())
