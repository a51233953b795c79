"""Evolutionary search of SparseViT's layer-wise pruning ratios under a MACs or latency budget."""
from .budget import LatencyBudget, MacsBudget
from .evaluation import SubsetEvaluator, build_model, restrict_metrics_to_samples
from .evolution import EvolutionarySearch, SearchLog, SearchResult, SearchSettings, pareto_front
from .report import plot_search, write_csv, write_pruning_ratios_fragment
from .space import SparsitySearchSpace

__all__ = [
    'EvolutionarySearch', 'LatencyBudget', 'MacsBudget', 'SearchLog', 'SearchResult', 'SearchSettings',
    'SparsitySearchSpace', 'SubsetEvaluator', 'build_model', 'pareto_front', 'plot_search',
    'restrict_metrics_to_samples', 'write_csv', 'write_pruning_ratios_fragment'
]
