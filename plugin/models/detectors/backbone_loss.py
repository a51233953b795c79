"""A mixin that adds the backbone's own losses, computed from the record of the training pass, to a model's losses."""
import torch

from ..utils.records import RecordingBackbone, recording


class BackboneLossMixin:
    """Adds ``backbone.auxiliary_losses(record)`` to what ``loss()`` returns.

    mmdet's and mmseg's models collect losses from their heads only. A backbone that trains part of
    itself (DynamicViT's predictors, SparseViT's learned window scorer) returns what it decided in the
    record of its forward pass; this mixin, placed before the model class, records the backbone's pass
    inside ``loss()`` and adds the losses the backbone computes from it, which the runner's
    ``parse_losses`` then sums and logs like any head loss.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.backbone, RecordingBackbone):
            raise TypeError(f'{type(self).__name__} needs a backbone that records its forward passes and computes '
                            f'its losses from them (a RecordingBackbone, with forward_with_record and '
                            f'auxiliary_losses: DynamicViT or SparseViTSwin), got '
                            f'{type(self.backbone).__name__}')

    def loss(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        with recording() as records:
            losses = super().loss(*args, **kwargs)
        if len(records) != 1:
            raise RuntimeError(f'{type(self).__name__}.loss ran its backbone {len(records)} times; its backbone '
                               f'losses are defined for one forward pass per loss')
        auxiliary = self.backbone.auxiliary_losses(records[0])
        clashes = sorted(auxiliary.keys() & losses.keys())
        if clashes:
            raise ValueError(f'the backbone loss names {clashes} are already used by the heads')
        losses.update(auxiliary)
        return losses
