"""What a finished search leaves behind: a config fragment, a CSV table and a plot."""
import csv
import json
from collections.abc import Sequence
from pathlib import Path

from .evolution import Record, SearchResult, SearchSettings


def write_pruning_ratios_fragment(path: Path, result: SearchResult, settings: SearchSettings,
                                  metric_name: str) -> str:
    """Write ``pruning_ratios = [...]`` of the best configuration, with how it was found; returns the text."""
    best = result.best
    text = (f'# Best of an evolutionary search (tools/search_sparsity.py): {metric_name} = {best["metric"]:.4f} '
            f'at {best["budget"]:.4g} {settings.budget_name},\n'
            f'# searched in [{settings.min_budget}, {settings.max_budget}] {settings.budget_name} '
            f'over {len(result.records)} candidates.\n'
            '# Fine-tune with it: a config with\n'
            "#   _base_ = ['<fine-tune config>.py', '<this file>']\n"
            "#   model = dict(backbone=dict(pruning_ratios={{_base_.pruning_ratios}}))\n"
            f'pruning_ratios = {json.dumps(best["pruning_ratios"])}\n')
    Path(path).write_text(text)
    return text


def write_csv(path: Path, records: Sequence[Record], pareto: Sequence[Record]) -> None:
    """One row per evaluated candidate, in evaluation order."""
    on_front = {id(record) for record in pareto}
    with Path(path).open('w', newline='') as table:
        writer = csv.writer(table)
        writer.writerow(['index', 'generation', 'origin', 'metric', 'budget', 'pareto', 'pruning_ratios'])
        for index, record in enumerate(records):
            writer.writerow([index, record['generation'], record['origin'], record['metric'], record['budget'],
                             int(id(record) in on_front), json.dumps(record['pruning_ratios'])])


def plot_search(path: Path, result: SearchResult, settings: SearchSettings, metric_name: str) -> None:
    """Metric against budget for every evaluated candidate, coloured by generation, Pareto front marked."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = result.records
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = axes.scatter([r['budget'] for r in records], [r['metric'] for r in records],
                          c=[r['generation'] for r in records], cmap='viridis', s=16, alpha=0.8)
    colorbar = figure.colorbar(points, ax=axes, label='generation')
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    front = result.pareto
    axes.step([r['budget'] for r in front], [r['metric'] for r in front], where='post', color='tab:red',
              marker='o', markersize=5, linewidth=1.2, label='Pareto front')
    axes.scatter([result.best['budget']], [result.best['metric']], marker='*', s=220, color='tab:orange',
                 edgecolors='black', zorder=3, label='best')
    for edge in (settings.min_budget, settings.max_budget):
        axes.axvline(edge, color='grey', linestyle='--', linewidth=0.8)
    axes.set_xlabel(f'{settings.budget_name} (window dashed)')
    axes.set_ylabel(metric_name)
    axes.set_title(f'Evolutionary search: {len(records)} candidates, '
                   f'{1 + max(r["generation"] for r in records)} generations')
    axes.legend(loc='best')
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
