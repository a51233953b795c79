"""Train a config with its library's own training script, in one process or many, on GPUs or on CPUs.

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options KEY=VALUE ...]
    torchrun --nproc-per-node N tools/train.py CONFIG --launcher pytorch [...]   # N processes on this machine
    tools/dist_train.sh CONFIG N [...]                                           # the same
    srun --ntasks 16 --ntasks-per-node 8 --gpus-per-task 1 python -u tools/train.py CONFIG --launcher slurm [...]

The script is mmdet's, mmseg's or mmdet3d's tools/train.py as installed with the
package (<package>/.mim/tools/train.py), chosen by the config's default_scope (mmdet's
where a wheel ships none), and every option is passed on to it (its --help lists them). With GPUs nothing else
changes: one process per GPU with NCCL, as the config's env_cfg says, exactly as
that script run directly. On a machine without CUDA and with a launcher, this first
starts the process group with gloo (MMEngine's launchers would pin a CUDA device)
and has the runner wrap the model in plugin's CPUDistributedDataParallel (no device
ids; SyncBN layers become BN), keeping the config's find_unused_parameters.
"""
import argparse
import importlib
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config, ConfigDict, DictAction

from plugin.utils.cli import HelpFormatter, run_tool
from plugin.utils.distributed import LAUNCHERS, check_launcher, close_distributed, init_distributed

# default_scope of a config -> the package whose training script runs it.
SCRIPT_PACKAGES = ('mmdet', 'mmseg', 'mmdet3d')
DDP_WRAPPERS = ('MMDistributedDataParallel', 'CPUDistributedDataParallel')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                     epilog='Any other option goes to the training script as it is.')
    parser.add_argument('config')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help="'pytorch' under torchrun, 'slurm' under srun, 'mpi' under mpirun")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_known_args(argv)[0]


def packaged_script(package_name: str) -> Path:
    """``<package>/.mim/tools/train.py`` (it may be missing: some wheels ship no tools)."""
    try:
        package = importlib.import_module(package_name)
    except ImportError as error:
        raise ValueError(f'the config is for {package_name}, which cannot be imported here: {error}') from None
    return Path(package.__file__).resolve().parent / '.mim' / 'tools' / 'train.py'


def training_script(cfg: Config) -> Path:
    """The training script of the package of the config's ``default_scope``, else mmdet's (which runs any
    MMEngine config: the config's default_scope picks the registries)."""
    scope = cfg.get('default_scope')
    if scope not in SCRIPT_PACKAGES:
        raise ValueError(f'the config\'s default_scope is {scope!r}; tools/train.py runs configs of '
                         f'{", ".join(SCRIPT_PACKAGES)}')
    script = packaged_script(scope)
    if script.is_file():
        return script
    fallback = packaged_script('mmdet')
    if not fallback.is_file():
        raise FileNotFoundError(f'neither {scope} nor mmdet is installed with its training script ({script}, '
                                f'{fallback})')
    print(f'{scope} is installed without its training script; running mmdet\'s {fallback}', file=sys.stderr)
    return fallback


def cpu_distributed_options(cfg: Config) -> list[str]:
    """``--cfg-options`` that make the runner wrap the model for CPUs (gloo), keeping the config's settings."""
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict()
    if wrapper.get('type', DDP_WRAPPERS[0]) not in DDP_WRAPPERS:
        raise ValueError(f'model_wrapper_cfg.type is {wrapper["type"]!r}; on CPUs tools/train.py supports '
                         f'{DDP_WRAPPERS[0]} (or none set)')
    options = ['model_wrapper_cfg.type=CPUDistributedDataParallel', 'env_cfg.dist_cfg.backend=gloo']
    # With a model_wrapper_cfg the runner no longer reads these two from the config's top level.
    if 'find_unused_parameters' not in wrapper:
        options.append(f'model_wrapper_cfg.find_unused_parameters={bool(cfg.get("find_unused_parameters"))}')
    if 'broadcast_buffers' not in wrapper:
        options.append('model_wrapper_cfg.broadcast_buffers=False')
    return ['--cfg-options', *options]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    script = training_script(cfg)
    check_launcher(args.launcher)
    if args.launcher != 'none' and not torch.cuda.is_available():
        argv += cpu_distributed_options(cfg)
        init_distributed(args.launcher, 'cpu', timeout=cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout'))
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name='__main__')
    finally:
        close_distributed()


if __name__ == '__main__':
    sys.exit(run_tool(main))
