"""Running a block with optional gradient checkpointing, and freezing parts: the one way every backbone does it."""
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp


def run_block(block: Any, x: torch.Tensor, *args: Any, with_cp: bool = False) -> torch.Tensor:
    """``block(x, *args)``, through non-reentrant gradient checkpointing when ``with_cp`` and ``x`` needs grad.

    Non-reentrant checkpointing works under DDP (no "marked ready twice") and with inputs that need no gradient.
    """
    if with_cp and x.requires_grad:
        return cp.checkpoint(block, x, *args, use_reentrant=False)
    return block(x, *args)


def freeze(modules: Iterable[nn.Module]) -> None:
    """Eval mode and no gradients for ``modules`` (``frozen_stages``)."""
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False
