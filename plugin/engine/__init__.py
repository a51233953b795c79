"""Runner hooks; importing this module registers them."""
from .hooks import ObjectCoverageHook, SparsityAwareAdaptationHook
from .slimming_hook import GumbelTemperatureHook

__all__ = ['GumbelTemperatureHook', 'ObjectCoverageHook', 'SparsityAwareAdaptationHook']
