"""Runner hooks; importing this module registers them."""
from .hooks import SparsityAwareAdaptationHook, find_sparse_backbone
from .slimming_hook import GumbelTemperatureHook

__all__ = ['GumbelTemperatureHook', 'SparsityAwareAdaptationHook', 'find_sparse_backbone']
