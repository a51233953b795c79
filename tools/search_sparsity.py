"""Evolutionary search of SparseViT's layer-wise pruning ratios inside a MACs or latency window.

    python tools/search_sparsity.py CONFIG CHECKPOINT --constraint macs --max 150 --min 120
    python tools/search_sparsity.py CONFIG CHECKPOINT --constraint latency --max 42 --min 37 --resume

CHECKPOINT is the sparsity-aware adapted model (configs/sparsevit/*_saa_*). Each
candidate is scored by the config's own evaluator (box AP for mmdet, mIoU for
mmseg, or --metric) on the first --num-val-images of its validation set. The
budget is the backbone's: GMACs per image at --shape (attention included, only
kept windows charged), or its median latency in ms for a batch of
--latency-batch images on the current device.

Writes to --work-dir: search_log.jsonl (every measured candidate; --resume
continues it), candidates.csv, pruning_ratios.py (the best configuration as a
config fragment) and search.png (metric against budget, Pareto front marked).

On N processes (one per GPU, or CPU processes with gloo), each candidate's
validation images are split across them; the budget is measured on rank 0,
which alone writes the files. Same seed, same log as one process:

    torchrun --nproc-per-node 8 tools/search_sparsity.py CONFIG CHECKPOINT --constraint macs \
        --max-budget 150 --min-budget 120 --launcher pytorch

(under torchrun write --max-budget and --min-budget: torchrun's parser takes a bare --max as its own).
"""
import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import get_world_size, is_main_process

from plugin.models.utils.sparsity import RATIO_CHOICES, find_sparse_backbone
from plugin.search import (
    EvolutionarySearch,
    LatencyBudget,
    MacsBudget,
    SearchSettings,
    SubsetEvaluator,
    build_model,
    plot_search,
    write_csv,
    write_pruning_ratios_fragment,
)
from plugin.search.evolution import SearchResult
from plugin.utils.cli import HelpFormatter, run_tool
from plugin.utils.distributed import LAUNCHERS, init_distributed, on_every_rank


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='the adapted (SAA) checkpoint: a path or URL')
    parser.add_argument('--constraint', choices=['macs', 'latency'], required=True,
                        help='macs: backbone GMACs per image; latency: backbone ms per batch')
    # The long names pass through torchrun, whose parser takes a bare --max for its --max-restarts.
    parser.add_argument('--max', '--max-budget', dest='max', type=float, required=True,
                        help='largest budget allowed (GMACs or ms)')
    parser.add_argument('--min', '--min-budget', dest='min', type=float, default=0.,
                        help='smallest budget allowed (GMACs or ms)')
    parser.add_argument('--population', type=int, default=100, help='candidates per generation')
    parser.add_argument('--generations', type=int, default=20, help='generations, the random one included')
    parser.add_argument('--topk', type=int, default=25, help='parents: the best candidates so far')
    parser.add_argument('--mutation-prob', type=float, default=0.1)
    parser.add_argument('--choices', type=float, nargs='+', default=list(RATIO_CHOICES),
                        help='ratios a block pair may take')
    parser.add_argument('--num-val-images', type=int, default=500,
                        help='first N validation images scored per candidate (0 = all)')
    parser.add_argument('--metric', default=None, help='metric key to maximise (default: coco/bbox_mAP or mIoU)')
    parser.add_argument('--shape', type=int, nargs=2, default=(672, 672), metavar=('H', 'W'),
                        help='input size at which the budget is measured')
    parser.add_argument('--latency-batch', type=int, default=4, help='batch size of latency measurements')
    parser.add_argument('--warmup', type=int, default=10, help='latency: untimed calls first')
    parser.add_argument('--repeats', type=int, default=30, help='latency: timed calls; the median is used')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--work-dir', default=None,
                        help='default: work_dirs/search_<config>_<constraint>_<min>-<max>')
    parser.add_argument('--resume', action='store_true', help='continue the search log in --work-dir')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-attempts', type=int, default=1000,
                        help='proposals per candidate before rejection sampling gives up')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help="'pytorch' under torchrun, 'slurm' under srun: one process per GPU (NCCL) or CPU "
                             "processes (gloo)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> SearchResult:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    work_dir = Path(args.work_dir or
                    f'work_dirs/search_{Path(args.config).stem}_{args.constraint}_{args.min:g}-{args.max:g}')
    init_distributed(args.launcher, args.device, timeout=cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout'))

    def build():
        model = build_model(cfg, args.checkpoint, args.device)
        backbone = find_sparse_backbone(model, 'tools/search_sparsity.py')
        if args.constraint == 'macs':
            budget = MacsBudget(backbone, args.shape)
        else:
            budget = LatencyBudget(backbone, args.shape, args.latency_batch, args.warmup, args.repeats)
        return backbone, budget, SubsetEvaluator(cfg, model, args.num_val_images or None, args.metric)

    # A rank that cannot build (a missing checkpoint on its node) stops every rank.
    backbone, budget, evaluate = on_every_rank(build)
    settings = SearchSettings(
        depths=backbone.depths, min_budget=args.min, max_budget=args.max, budget_name=budget.name,
        population_size=args.population, generations=args.generations, topk=args.topk,
        mutation_prob=args.mutation_prob, choices=tuple(args.choices), seed=args.seed,
        max_attempts=args.max_attempts)
    search = EvolutionarySearch(evaluate, budget, settings, log_path=work_dir / 'search_log.jsonl',
                                resume=args.resume, progress=not args.no_progress)
    start = time.perf_counter()
    result = search.run()
    seconds = time.perf_counter() - start
    if not is_main_process():
        return result

    metric_name = evaluate.describe()
    fragment = write_pruning_ratios_fragment(work_dir / 'pruning_ratios.py', result, settings, metric_name)
    write_csv(work_dir / 'candidates.csv', result.records, result.pareto)
    plot_search(work_dir / 'search.png', result, settings, metric_name)
    processes = get_world_size()
    print(f'\nEvaluated {len(result.records)} candidates in {seconds:.1f} s on {processes} '
          f'process{"es" if processes > 1 else ""}; Pareto front ({metric_name} vs {settings.budget_name}):')
    for record in result.pareto:
        print(f"  {record['budget']:10.4g}  {record['metric']:.4f}  {record['pruning_ratios']}")
    print(f'\n{fragment}\nWritten to {work_dir}: search_log.jsonl, candidates.csv, pruning_ratios.py, search.png')
    return result


if __name__ == '__main__':
    sys.exit(run_tool(main))
