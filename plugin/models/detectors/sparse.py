"""Sparse all the way: a detector's or segmentor's features computed only on the tiles its backbone computed."""
import inspect

import torch

from ..utils.records import recording
from ..utils.tile_conv import SparseFeatures
from .backbone_loss import BackboneLossMixin


class SparseNeckMixin(BackboneLossMixin):
    """Passes the tiles that the backbone computed to the neck, and adds the backbone's losses.

    Placed before an mmdet/mmseg/mmdet3d model class, whose ``extract_feat`` the subclass routes to
    :meth:`extract_sparse_features`: the backbone's ``forward_with_record`` gives the feature maps and
    the record of the windows each stage computed; the neck (SparseFPN) computes only those tiles and
    returns :class:`~plugin.models.utils.tile_conv.SparseFeatures`, a tuple that the library's heads
    take as they are and from which the sparse heads read the tiles. Where the backbone computed
    every window (no pruning, or the learned scorer in training, which runs every window), every entry
    is None and the model computes what the library's model computes.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not getattr(self, 'with_neck', False) or 'kept_tiles' not in inspect.signature(
                self.neck.forward).parameters:
            raise TypeError(f'{type(self).__name__} passes the backbone\'s kept tiles to its neck, which must take '
                            f'them (forward(inputs, kept_tiles): SparseFPN); got '
                            f'{type(getattr(self, "neck", None)).__name__}')
        if not isinstance(getattr(self.backbone, 'out_indices', None), tuple):
            raise TypeError(f'{type(self).__name__} needs a backbone with out_indices (the stages whose maps it '
                            f'returns), got {type(self.backbone).__name__}')

    def extract_sparse_features(self, images: torch.Tensor) -> SparseFeatures:
        """The neck's maps of ``images``, each with the tiles computed on it (None: everywhere)."""
        # Called as a module (not forward_with_record): its forward hooks run, e.g. those of timers and counters.
        with recording() as records:
            features = self.backbone(images)
        return self.neck(features, records[-1].kept_tiles(self.backbone.out_indices))
