"""Runner hooks and model wrappers; importing this module registers them."""
from .cpu_ddp import CPUDistributedDataParallel
from .hooks import ObjectCoverageHook, SparsityAwareAdaptationHook
from .progress import ProgressBarHook
from .slimming_hook import GumbelTemperatureHook

__all__ = ['CPUDistributedDataParallel', 'GumbelTemperatureHook', 'ObjectCoverageHook', 'ProgressBarHook',
           'SparsityAwareAdaptationHook']
