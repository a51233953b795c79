"""MMEngine's data-parallel model wrapper for models on CPUs (gloo), as ``model_wrapper_cfg`` of a runner."""
from collections.abc import Sequence

import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` (same steps and arguments) for a model whose parameters are on the CPU.

    MMEngine's runner passes the local rank as ``device_ids``, which torch's DDP refuses
    for a CPU model: it is dropped. torch's ``SyncBatchNorm`` trains only on GPUs, so
    SyncBN layers become BN, each process normalising with its own batch's statistics
    (the log says so). ``tools/train.py`` selects this wrapper on machines without CUDA.
    """

    def __init__(self, module: nn.Module, device_ids: Sequence[int] | None = None, **kwargs) -> None:
        devices = {param.device.type for param in module.parameters()}
        if devices - {'cpu'}:
            raise ValueError(f'CPUDistributedDataParallel wraps a model on the CPU; this one has parameters on '
                             f'{sorted(devices)}: use MMDistributedDataParallel on GPUs')
        # torch's SyncBatchNorm and mmcv's (MMSyncBN) share the name; mmengine reverts both.
        if any(type(layer).__name__ == 'SyncBatchNorm' for layer in module.modules()):
            MMLogger.get_current_instance().warning(
                'SyncBatchNorm runs on GPUs only: on CPUs its layers are reverted to BatchNorm, which normalises '
                'with the statistics of each process\'s own batch')
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=None, **kwargs)
