"""Evolutionary search of layer-wise pruning ratios inside a budget window (SparseViT, Sec. 3.3).

Generation 0 is drawn at random; every later generation is bred from the top-k
configurations evaluated so far, half by mutation and half by crossover, as in
the authors' searcher. Every proposal goes through rejection sampling: it must
be new and its budget (MACs, latency, ...) must lie in ``[min_budget, max_budget]``;
only then is it evaluated, once.

The search is a pure function of its settings and of what ``budget`` and
``evaluate`` return. Every measurement goes to a JSON-lines log, so a resumed
search replays the logged ones instead of measuring again and ends exactly
where an uninterrupted one would (noisy latency included).

In a distributed run (a started process group) every rank runs the same search:
``evaluate`` runs on every rank (each scoring its shard of the images, see
``SubsetEvaluator``) and rank 0's metric is the one every rank uses; ``budget``
runs on rank 0 only and its value is shared; only rank 0 reads and writes the
log and shows progress. A failure on any rank ends the search on every rank.
So the search takes the same decisions, and writes the same log, as one process.
"""
import dataclasses
import json
import math
import random
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from mmengine.dist import is_main_process
from tqdm import tqdm

from ..models.utils.sparsity import RATIO_CHOICES, PruningRatios
from ..utils.distributed import on_every_rank, on_main_rank
from .space import Genes, SparsitySearchSpace

Record = dict[str, object]
EvaluateFn = Callable[[PruningRatios], float]
BudgetFn = Callable[[PruningRatios], float]


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Everything that determines a search's course; a resumed log must have been written with the same.

    Args:
        depths: Blocks per stage of the backbone.
        min_budget, max_budget: The window a candidate's budget must lie in.
        budget_name: What the budget measures, with its unit and setting (e.g. 'GMACs@672x672').
        population_size: Candidates per generation.
        generations: Number of generations, the random one included.
        topk: Parents of the next generation: the best evaluated so far.
        mutation_prob: Probability that mutation redraws each pair ratio.
        choices: Ratios a block pair may take.
        seed: Seed of every random decision.
        max_attempts: Proposals tried per candidate before rejection sampling gives up.
    """
    depths: tuple[int, ...]
    min_budget: float
    max_budget: float
    budget_name: str = 'budget'
    population_size: int = 100
    generations: int = 20
    topk: int = 25
    mutation_prob: float = 0.1
    choices: tuple[float, ...] = RATIO_CHOICES
    seed: int = 0
    max_attempts: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, 'depths', tuple(self.depths))
        object.__setattr__(self, 'choices', tuple(float(c) for c in self.choices))
        if not self.min_budget <= self.max_budget:
            raise ValueError(f'min_budget ({self.min_budget}) must not exceed max_budget ({self.max_budget})')
        for name in ('population_size', 'generations', 'max_attempts'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.topk < 2:
            raise ValueError(f'topk must be >= 2 (crossover needs two parents), got {self.topk}')
        if not 0 <= self.mutation_prob <= 1:
            raise ValueError(f'mutation_prob must lie in [0, 1], got {self.mutation_prob}')

    def as_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass
class SearchResult:
    """best: the evaluated record with the highest metric; records: every evaluated one, in order."""
    best: Record
    records: list[Record]
    pareto: list[Record]


def pareto_front(records: Sequence[Record]) -> list[Record]:
    """Records that no other record beats on both metric (higher) and budget (lower), by budget."""
    front: list[Record] = []
    for record in sorted(records, key=lambda r: (r['budget'], -r['metric'])):
        if not front or record['metric'] > front[-1]['metric']:
            front.append(record)
    return front


def genes_of(record: Record) -> Genes:
    return tuple(tuple(stage[0::2]) for stage in record['pruning_ratios'])


class SearchLog:
    """JSON-lines log: a settings line, then one line per measured candidate.

    ``event`` is 'bound' (the budget of the all-lowest or all-highest ratios,
    measured first to check the window), 'evaluated' (budget inside the window
    and metric) or 'rejected' (budget outside the window, never evaluated).
    """

    def __init__(self, path: Path, settings: SearchSettings, resume: bool) -> None:
        self.path = Path(path)
        self.records: list[Record] = []
        if resume and self.path.exists():
            self._load(settings)
            return
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists: resume it, or write the search elsewhere')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(dict(event='settings', **settings.as_json())) + '\n')

    def _load(self, settings: SearchSettings) -> None:
        lines = self.path.read_text().splitlines()
        entries = []
        for number, line in enumerate(lines):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                if number != len(lines) - 1:
                    raise ValueError(f'{self.path}, line {number + 1}, is not JSON: {line[:80]!r}')
                # An interrupted write leaves a partial last line; drop it so new lines follow valid ones.
                warnings.warn(f'{self.path}: dropping the incomplete last line')
                self.path.write_text(''.join(f'{text}\n' for text in lines[:-1]))
        if not entries or entries[0].get('event') != 'settings':
            raise ValueError(f'{self.path} does not start with a settings line: not a search log')
        logged = {k: v for k, v in entries[0].items() if k != 'event'}
        expected = settings.as_json()
        differing = sorted(k for k in set(logged) | set(expected) if logged.get(k) != expected.get(k))
        if differing:
            details = ', '.join(f'{k}: log {logged.get(k)!r} vs now {expected.get(k)!r}' for k in differing)
            raise ValueError(f'cannot resume {self.path}: its search used other settings ({details})')
        self.records = entries[1:]

    def append(self, record: Record) -> None:
        with self.path.open('a') as log:
            log.write(json.dumps(record) + '\n')


class EvolutionarySearch:
    """Find the pruning ratios with the best metric whose budget lies in a window.

    Args:
        evaluate: Metric of a configuration (higher is better), e.g. box AP on a validation subset; in a
            distributed run it is called on every rank (it may use collectives, as ``SubsetEvaluator`` does).
        budget: Cost of a configuration, e.g. backbone GMACs or latency in ms; in a distributed run it is
            called on rank 0 only.
        settings: See :class:`SearchSettings`.
        log_path: JSON-lines log of every measurement; None keeps no log. Rank 0's path in a distributed run.
        resume: Replay an existing log at ``log_path`` (written with the same settings).
        progress: Show a progress bar with the generation, the best metric and its budget (rank 0 only).
    """

    def __init__(self,
                 evaluate: EvaluateFn,
                 budget: BudgetFn,
                 settings: SearchSettings,
                 log_path: Path | None = None,
                 resume: bool = False,
                 progress: bool = False) -> None:
        self.evaluate = evaluate
        self.budget = budget
        self.settings = settings
        self.space = SparsitySearchSpace(settings.depths, settings.choices)
        self.log: SearchLog | None = None
        self.progress = progress and is_main_process()
        logged = [] if log_path is None else on_main_rank(lambda: self._open_log(log_path, resume))
        self._budgets: dict[Genes, float] = {genes_of(r): r['budget'] for r in logged}
        self._metrics: dict[Genes, float] = {genes_of(r): r['metric'] for r in logged
                                             if r['event'] == 'evaluated'}

    def _open_log(self, log_path: Path, resume: bool) -> list[Record]:
        self.log = SearchLog(log_path, settings=self.settings, resume=resume)
        return self.log.records

    def run(self) -> SearchResult:
        settings = self.settings
        self._check_window()
        rng = random.Random(settings.seed)
        evaluated: dict[Genes, Record] = {}
        best: Record | None = None
        bar = tqdm(total=settings.population_size * settings.generations, desc='search',
                   unit='cand', disable=not self.progress, dynamic_ncols=True)
        with bar:
            for generation in range(settings.generations):
                parents = [genes for genes, _ in sorted(
                    evaluated.items(), key=lambda item: (-item[1]['metric'], item[1]['budget']))][:settings.topk]
                added = failed = 0
                for slot in range(settings.population_size):
                    if generation == 0:
                        origin = 'random'
                    elif slot < settings.population_size // 2 or len(parents) < 2:
                        origin = 'mutation'
                    else:
                        origin = 'crossover'
                    proposal = self._propose(rng, origin, parents, evaluated, generation)
                    if proposal is None:
                        if best is None:
                            raise RuntimeError(f'no configuration with a budget in the window found in '
                                               f'{settings.max_attempts} random proposals; {self._bounds_text()}')
                        failed += 1
                        # Random proposals failing once means the window holds no more new ones.
                        if origin == 'random':
                            break
                        continue
                    record = self._evaluate(*proposal, generation, origin)
                    evaluated[proposal[0]] = record
                    added += 1
                    if best is None or (record['metric'], -record['budget']) > (best['metric'], -best['budget']):
                        best = record
                    bar.update()
                    bar.set_postfix(OrderedDict(generation=generation, best=f"{best['metric']:.4g}",
                                                budget=f"{best['budget']:.4g} {settings.budget_name}"))
                if failed and is_main_process():
                    warnings.warn(f'generation {generation}: {failed} of {settings.population_size} slots found '
                                  f'no new candidate within [{settings.min_budget}, {settings.max_budget}] '
                                  f'{settings.budget_name} in {settings.max_attempts} proposals each')
                if added == 0:
                    break
        records = list(evaluated.values())
        return SearchResult(best=best, records=records, pareto=pareto_front(records))

    def _propose(self, rng: random.Random, origin: str, parents: list[Genes],
                 evaluated: dict[Genes, Record], generation: int) -> tuple[Genes, float] | None:
        """Rejection sampling: a new configuration whose budget is inside the window, with that budget."""
        settings = self.settings
        for _ in range(settings.max_attempts):
            if origin == 'random':
                genes = self.space.sample(rng)
            elif origin == 'mutation':
                genes = self.space.mutate(rng.choice(parents), rng, settings.mutation_prob)
            else:
                first, second = rng.sample(parents, 2)
                genes = self.space.crossover(first, second, rng)
            if genes in evaluated:
                continue
            budget = self._measure(genes, generation, origin)
            if settings.min_budget <= budget <= settings.max_budget:
                return genes, budget
        return None

    def _shared_budget(self, genes: Genes) -> float:
        """The budget of ``genes``, measured on rank 0 (one latency measurement, the same on every rank)."""
        ratios = self.space.to_pruning_ratios(genes)
        budget = on_main_rank(lambda: float(self.budget(ratios)))
        if not math.isfinite(budget):
            raise ValueError(f'budget returned {budget} for pruning ratios {ratios}')
        return budget

    def _measure(self, genes: Genes, generation: int, origin: str) -> float:
        if genes not in self._budgets:
            budget = self._shared_budget(genes)
            self._budgets[genes] = budget
            if not self.settings.min_budget <= budget <= self.settings.max_budget:
                self._write(dict(event='rejected', generation=generation, origin=origin,
                                 pruning_ratios=self.space.to_pruning_ratios(genes), budget=budget))
        return self._budgets[genes]

    def _evaluate(self, genes: Genes, budget: float, generation: int, origin: str) -> Record:
        ratios = self.space.to_pruning_ratios(genes)
        record = dict(event='evaluated', generation=generation, origin=origin,
                      pruning_ratios=ratios, budget=budget)
        if genes in self._metrics:
            return dict(record, metric=self._metrics[genes])
        metric = on_every_rank(lambda: float(self.evaluate(ratios)))
        # Rank 0's metric decides on every rank, so that no two ranks can take different paths.
        metric = on_main_rank(lambda: metric)
        if not math.isfinite(metric):
            raise ValueError(f'evaluate returned {metric} for pruning ratios {ratios}')
        record['metric'] = self._metrics[genes] = metric
        self._write(record)
        return record

    def _write(self, record: Record) -> None:
        if self.log is not None:
            self.log.append(record)

    def _uniform_genes(self, ratio: float) -> Genes:
        return tuple((ratio,) * ((depth + 1) // 2) for depth in self.space.depths)

    def _bound_budgets(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``((lowest ratio, its budget), (highest ratio, its budget))``: the costliest and cheapest
        configurations of the space, measured once (and logged, so a resumed search replays them)."""
        bounds = []
        for ratio in (min(self.space.choices), max(self.space.choices)):
            genes = self._uniform_genes(ratio)
            if genes not in self._budgets:
                self._budgets[genes] = self._shared_budget(genes)
                self._write(dict(event='bound', generation=-1, origin='bound',
                                 pruning_ratios=self.space.to_pruning_ratios(genes), budget=self._budgets[genes]))
            bounds.append((ratio, self._budgets[genes]))
        return bounds[0], bounds[1]

    def _bounds_text(self) -> str:
        (low, low_budget), (high, high_budget) = self._bound_budgets()
        settings = self.settings
        return (f'the window is [{settings.min_budget}, {settings.max_budget}] {settings.budget_name}; all ratios '
                f'{low:g} cost {low_budget:.4g} and all ratios {high:g} cost {high_budget:.4g}')

    def _check_window(self) -> None:
        """Refuse at once a window that no configuration can reach: the budget falls with the ratios,
        so every configuration costs between the all-highest and the all-lowest ratios'."""
        (_, low_budget), (_, high_budget) = self._bound_budgets()
        cheapest, dearest = min(low_budget, high_budget), max(low_budget, high_budget)
        if self.settings.max_budget < cheapest or self.settings.min_budget > dearest:
            raise ValueError(f'no configuration can meet the budget window: {self._bounds_text()}; choose a '
                             f'window that overlaps [{cheapest:.4g}, {dearest:.4g}]')
