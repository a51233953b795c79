"""DDP training steps of each backbone on half of a batch per process, against the gradients of one
process on the whole batch (run by worker.py in each of the 2 processes)."""
import copy
from unittest import mock

import torch
import torch.nn.functional as F
from mmengine.dist import get_rank, get_world_size

from plugin.engine import CPUDistributedDataParallel
from plugin.models.backbones import DynamicViT, SparseViTSwin
from plugin.models.utils.records import recording

BATCH = 4
SWIN = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.)
# Every block keeps at least one window at 64x64, so no module is skipped.
L2_RATIOS = [[0.5, 0.5], [0.25, 0.5], 0., 0.]
# Stages 1 and 3 prune nothing: their window scorers never run (the reason the learned-scorer configs set
# find_unused_parameters).
LEARNED_RATIOS = [[0.3, 0.5], 0., [0.5, 0.5], 0.]
CASES = {
    # name: (backbone factory, find_unused_parameters)
    'sparsevit_with_cp': (lambda: SparseViTSwin(**SWIN, with_cp=True, pruning_ratios=L2_RATIOS), False),
    'sparsevit_with_cp_find_unused': (lambda: SparseViTSwin(**SWIN, with_cp=True, pruning_ratios=L2_RATIOS), True),
    'sparsevit_learned_scorer': (lambda: SparseViTSwin(**SWIN, scorer='learned', pruning_ratios=LEARNED_RATIOS), True),
    'dynamicvit': (lambda: DynamicViT(embed_dims=48, depth=6, num_heads=3, pruning_locs=(1, 3, 5),
                                      drop_path_rate=0.), False),
}


class PerImageNoise:
    """Training noise that depends on the image and the draw only, so that an image gets the same noise
    in one process's whole batch and in another process's half of it."""

    def __init__(self, image_ids) -> None:
        self.image_ids, self.draws = list(image_ids), 0

    def uniform(self, shape) -> torch.Tensor:
        rows = [torch.rand(shape, generator=torch.Generator().manual_seed(1000 * image + self.draws))
                for image in self.image_ids]
        self.draws += 1
        return torch.stack(rows).clamp(1e-6, 1 - 1e-6)

    def logistic(self, scores: torch.Tensor) -> torch.Tensor:
        """Stands in for ``sample_logistic_noise`` of SparseViT-Swin's learned scorer."""
        uniform = self.uniform(scores.shape[1:])
        return (uniform.log() - torch.log1p(-uniform)).to(scores.dtype)

    def gumbel_decision(self, log_probs: torch.Tensor, prev_decision: torch.Tensor) -> torch.Tensor:
        """Stands in for ``DynamicViT.sample_keep_decision``: hard Gumbel-Softmax as torch computes it."""
        soft = (log_probs - (-self.uniform(log_probs.shape[1:]).log()).log()).softmax(-1)
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return (hard - soft.detach() + soft)[..., :1] * prev_decision


def loss_of(model, images: torch.Tensor, image_ids) -> torch.Tensor:
    """A mean over images (as the detectors' losses are), plus the backbone's own losses."""
    noise = PerImageNoise(image_ids)
    backbone = getattr(model, 'module', model)
    if isinstance(backbone, DynamicViT):
        patch = mock.patch.object(backbone, 'sample_keep_decision', noise.gumbel_decision)
    else:
        patch = mock.patch('plugin.models.backbones.sparsevit_swin.sample_logistic_noise', noise.logistic)
    with patch, recording() as records:
        outputs = model(images)
    per_image = sum((out**2).mean((1, 2, 3)) for out in outputs)
    return per_image.mean() + sum(backbone.auxiliary_losses(records[0]).values())


def gradients(model) -> dict:
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def compare(name: str, factory, find_unused: bool, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = factory().train()
    images = torch.randn(BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model)
    loss_of(reference, images, range(BATCH)).backward()
    expected = gradients(reference)

    ddp = CPUDistributedDataParallel(module=model, find_unused_parameters=find_unused)
    shard = range(rank * BATCH // world, (rank + 1) * BATCH // world)
    worst = 0.
    # Two steps: DDP reports a parameter it waited for in vain at the step after.
    for _ in range(2):
        ddp.zero_grad(set_to_none=True)
        loss_of(ddp, images[list(shard)], shard).backward()
        for key, grad in gradients(model).items():
            assert (grad is None) == (expected[key] is None), f'{name}: {key} has a gradient in one run only'
            if grad is not None:
                torch.testing.assert_close(grad, expected[key], rtol=1e-4, atol=1e-6, msg=f'{name}: {key}')
                worst = max(worst, (grad - expected[key]).abs().max().item())
    return dict(max_abs_difference=worst,
                with_gradient=sorted(k for k, g in expected.items() if g is not None and g.abs().sum() > 0),
                without_gradient=sorted(k for k, g in expected.items() if g is None))


def compare_all() -> dict[str, dict]:
    """Every case compared on this rank (the process group must exist)."""
    return {name: compare(name, factory, find_unused, get_rank(), get_world_size())
            for name, (factory, find_unused) in CASES.items()}
