"""Weights away from their initial values, shared by the tests that compare two computations of a model."""
import re

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomize(model: nn.Module) -> nn.Module:
    """Give every weight that a function of the model depends on a non-trivial value: BN statistics and affine
    weights away from (0, 1) (so folding them into convs is no identity), LayerScale and attention biases."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
            if isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
        for name, param in model.named_parameters():
            if name.endswith('gamma') or re.search(r'(layer_scale_\d|ls\d\.weight)$', name):
                param.uniform_(0.5, 1.5)  # LayerScale starts at 1e-5, which would hide its branch
            elif 'attention_biases' in name:
                param.normal_()
    return model
