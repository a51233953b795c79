"""Evolutionary search of SparseViT's layer-wise pruning ratios under a MACs or latency budget."""
from .budget import LatencyBudget, MacsBudget
from .evaluation import SubsetEvaluator, build_model, load_trusted_checkpoint
from .evolution import EvolutionarySearch, SearchLog, SearchResult, SearchSettings, pareto_front
from .report import plot_search, write_csv, write_pruning_ratios_fragment
from .space import SparsitySearchSpace, parse_pruning_ratios

__all__ = [
    'EvolutionarySearch', 'LatencyBudget', 'MacsBudget', 'SearchLog', 'SearchResult', 'SearchSettings',
    'SparsitySearchSpace', 'SubsetEvaluator', 'build_model', 'load_trusted_checkpoint', 'pareto_front',
    'parse_pruning_ratios', 'plot_search', 'write_csv', 'write_pruning_ratios_fragment'
]
