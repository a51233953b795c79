"""A mixin that adds the backbone's auxiliary losses to a detector's or segmentor's losses."""

import torch


class BackboneLossMixin:
    """Adds ``backbone.auxiliary_losses()`` to what ``loss()`` returns.

    mmdet's and mmseg's models collect losses from their heads only, so a backbone
    that trains part of itself (DynamicViT's predictors) records its loss in its
    forward pass and this mixin, placed before the model class, adds it; the
    runner's ``parse_losses`` then sums and logs it like any head loss.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not callable(getattr(self.backbone, 'auxiliary_losses', None)):
            raise TypeError(f'{type(self).__name__} needs a backbone with an auxiliary_losses() method '
                            f'(e.g. DynamicViT), got {type(self.backbone).__name__}')

    def loss(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        losses = super().loss(*args, **kwargs)
        auxiliary = self.backbone.auxiliary_losses()
        clashes = sorted(auxiliary.keys() & losses.keys())
        if clashes:
            raise ValueError(f'the backbone loss names {clashes} are already used by the heads')
        losses.update(auxiliary)
        return losses
