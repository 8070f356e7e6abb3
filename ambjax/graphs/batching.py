"""Building padded `DialogueBatch`es with fixed, bucketed budgets (`Budget`, `plan_budgets`,
`build_batch`, `GraphBatcher`). The batch types and their shapes are in `ambjax.graphs.batch`."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Iterator, Mapping, Sequence

import numpy as np

from ambjax.errors import ConfigError
from ambjax.data.dataset import Dialogue, DialogueDataset
from ambjax.graphs.batch import DialogueBatch, DialogueLayout, EdgeSet, Nodes
from ambjax.graphs.edges import GRAPH_KINDS, DialogueEdges, dialogue_edges


@dataclasses.dataclass(frozen=True, order=True)
class Budget:
    """Static sizes of one padded batch (per device).

    `band`: when set, every edge joins nodes at most `band` apart in the flat node order (the
    edge window: a dialogue's nodes are contiguous), which lets graph aggregation run on banded
    blocks (`ambjax.nn.aggregate`); None: no such promise.

    `n_row`: rows of the batch's dense per-dialogue view (`DialogueLayout.dense_index`, where
    the context encoder attends), each `max_len` slots long. None: one row per dialogue slot
    (`n_graph` rows). Set: the dialogues are packed into `n_row` rows (`pack_rows`, whole
    dialogues, several per row), which the encoder's attention masks apart; a run sets it to
    the most rows any of its batches needs (`GraphBatcher.with_packed_rows`).
    """

    n_node: int
    n_edge_intra: int
    n_edge_inter: int
    n_graph: int
    max_len: int
    band: int | None = None
    n_row: int | None = None

    @property
    def rows(self) -> int:
        """Rows of the dense view: `n_row`, or `n_graph` when unset."""
        return self.n_graph if self.n_row is None else self.n_row


def pack_rows(lengths: Sequence[int], row_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Place dialogues of `lengths` in rows of `row_len` slots: first fit, longest first.

    Returns:
      (row, offset) int32 [D] each: dialogue i occupies slots offset[i] .. offset[i] +
      lengths[i] - 1 of row row[i]; rows are numbered from 0 without gaps, and a row's
      dialogues never overlap. At most one row is half full or less, so the rows number at
      most 2 sum(lengths) / row_len + 1.

    Example:
      >>> row, offset = pack_rows([5, 3, 6, 2], 8)
      >>> row.tolist(), offset.tolist()
      ([1, 1, 0, 0], [0, 5, 0, 6])
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > row_len:
        raise ConfigError(f"a dialogue of {lengths.max()} utterances exceeds rows of {row_len}")
    row = np.zeros(lengths.size, np.int32)
    offset = np.zeros(lengths.size, np.int32)
    used: list[int] = []
    for i in np.argsort(-lengths, kind="stable"):
        r = next((r for r, u in enumerate(used) if u + lengths[i] <= row_len), len(used))
        if r == len(used):
            used.append(0)
        row[i], offset[i] = r, used[r]
        used[r] += int(lengths[i])
    return row, offset


def rows_needed(lengths: Sequence[int], row_len: int) -> int:
    """Rows of `row_len` slots that `pack_rows` fills with dialogues of `lengths`, plus one
    when they are full to the last slot: a packed view keeps at least one padding slot (the
    padding node's, which padding edges use)."""
    return _rows_used(pack_rows(lengths, row_len)[0], lengths, row_len)


def _rows_used(row: np.ndarray, lengths: Sequence[int], row_len: int) -> int:
    """`rows_needed` from a packing's `row` (`pack_rows`) of dialogues of `lengths`."""
    rows = int(row.max(initial=-1)) + 1
    return rows + 1 if int(np.sum(lengths)) == rows * row_len else rows


def _round_up(x: int, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def plan_budgets(lengths: Sequence[int], edges_per_node: dict[str, float], graphs_per_batch: int,
                 *, growth: float | None = 1.1, band: int | None = None) -> tuple[Budget, ...]:
    """A small ladder of budgets that fits any batch of `graphs_per_batch` dialogues.

    Node budgets grow geometrically (factor `growth`, rounded up to multiples of 16, or 64 above
    512) from the smallest possible batch to the largest (the sum of the longest dialogues),
    always keeping one spare padding node; edge budgets follow from the largest edges-per-node
    ratio of the dataset, so any batch that fits the node budget fits the edge budget.

    Args:
      lengths: utterances per dialogue of the whole dataset.
      edges_per_node: "intra"/"inter" -> max over dialogues of edges / utterances.
      graphs_per_batch: dialogues per (device) batch.
      growth: ratio between successive node budgets (> 1); None gives a single budget (one
        compiled shape, more padding).
      band: the edge window, if every edge stays inside it (see `Budget`).

    Returns:
      Budgets sorted by size.
    """
    lengths = np.sort(np.asarray(lengths))
    k = min(graphs_per_batch, len(lengths))
    lo, hi = int(lengths[:1].sum()) + 1, int(lengths[-k:].sum()) + 1
    sizes = []
    size = hi
    while True:
        sizes.append(_round_up(size, 64 if size > 512 else 16))
        if size <= lo or growth is None:
            break
        size = max(lo, int(size / growth))
    out = []
    for n in sorted(set(sizes)):
        out.append(Budget(
            n_node=n,
            n_edge_intra=_round_up(math.ceil(edges_per_node["intra"] * (n - 1)), 16),
            n_edge_inter=_round_up(math.ceil(edges_per_node["inter"] * (n - 1)), 16),
            n_graph=graphs_per_batch + 1, max_len=int(lengths[-1]), band=band))
    return tuple(out)


def merge_budgets(budgets: Sequence[Budget], steps: Mapping[Budget, Mapping[str, int]],
                  compile_node_steps: float) -> tuple[Budget, ...]:
    """Keep only the padding buckets that save more step time than their compiles cost.

    Every budget a run uses needs its own compiled program per kind of step ("train", "eval")
    that runs on it. Dropping a used budget pads its batches to the next kept one instead:
    fewer programs to compile, more padded nodes in every step. This chooses the kept budgets
    (the largest used one always) that minimise

        compile_node_steps x programs + sum over used budgets b of steps(b) x (n(kept) - n(b))

    exactly (dynamic programming over the used budgets, smallest first). Padding changes no
    result, only the time.

    Args:
      budgets: the ladder, sorted by size (`plan_budgets`).
      steps: budget -> {kind: steps over the run}; budgets missing or with no steps are unused.
      compile_node_steps: what one program's compile costs, in node-steps of padded batches
        (<= 0: keep every bucket).

    Returns:
      The kept budgets and those of the ladder above the largest used one (a batch larger
      than any of the run's still gets a budget), sorted by size.

    Example:
      >>> small, mid, big = (Budget(n, n, n, 3, 9) for n in (64, 96, 128))
      >>> steps = {small: {"train": 2}, big: {"train": 50}}     # 2 steps x 64 padded nodes
      >>> [b.n_node for b in merge_budgets((small, mid, big), steps, 100.0)]
      [64, 128]
      >>> [b.n_node for b in merge_budgets((small, mid, big), steps, 200.0)]
      [128]
    """
    used = [b for b in budgets if sum(steps.get(b, {}).values())]
    if compile_node_steps <= 0 or len(used) < 2:
        return tuple(budgets)

    def segment(lo: int, hi: int) -> float:
        """Cost of used[lo..hi] all run on used[hi]."""
        kinds = {k for b in used[lo:hi + 1] for k, n in steps[b].items() if n}
        padded = sum(sum(steps[b].values()) * (used[hi].n_node - b.n_node)
                     for b in used[lo:hi])
        return compile_node_steps * len(kinds) + padded

    best = [0.0] + [math.inf] * len(used)       # best[i]: cost of used[:i] ending on a kept one
    last = [0] * (len(used) + 1)
    for hi in range(len(used)):
        for lo in range(hi + 1):
            cost = best[lo] + segment(lo, hi)
            if cost < best[hi + 1]:
                best[hi + 1], last[hi + 1] = cost, lo
    kept, i = [], len(used)
    while i:
        kept.append(used[i - 1])
        i = last[i]
    return tuple(sorted(kept) + [b for b in budgets if b > used[-1]])


def _pad_edges(edge_list: Sequence[DialogueEdges], offsets: np.ndarray, n_edge: int,
               n_node: int, n_graph: int, kind: str, band: int | None) -> EdgeSet:
    counts = np.array([len(e.types) for e in edge_list], np.int32)
    total = int(counts.sum())
    if total > n_edge:
        raise ConfigError(f"{kind} edges {total} exceed the budget {n_edge}")
    senders = np.full(n_edge, n_node - 1, np.int32)
    receivers = np.full(n_edge, n_node - 1, np.int32)
    types = np.zeros(n_edge, np.int32)
    if edge_list:
        shift = np.repeat(offsets, counts)
        senders[:total] = np.concatenate([e.senders for e in edge_list]) + shift
        receivers[:total] = np.concatenate([e.receivers for e in edge_list]) + shift
        types[:total] = np.concatenate([e.types for e in edge_list])
    if band is not None and total:
        reach = np.abs(senders[:total] - receivers[:total])  # dialogues are contiguous
        if reach.max() > band:
            i = int(np.searchsorted(np.cumsum(counts), int(reach.argmax()), side="right"))
            raise ConfigError(f"{kind} edges of dialogue {i} join utterances {int(reach.max())} "
                             f"apart, beyond the budget's band {band}")
    n_edge_per_graph = np.zeros(n_graph, np.int32)
    n_edge_per_graph[:len(counts)] = counts
    n_edge_per_graph[-1] += n_edge - total
    return EdgeSet(senders=senders, receivers=receivers, types=types, n_edge=n_edge_per_graph)


def build_batch(dialogues: Sequence[Dialogue], budget: Budget, *, modalities: Sequence[str],
                num_speakers: int, edges: dict[str, Sequence[DialogueEdges]],
                dims: dict[str, int] | None = None) -> DialogueBatch:
    """Pack dialogues into one padded `DialogueBatch` of exactly `budget`'s shapes.

    Args:
      dialogues: at most `budget.n_graph - 1` dialogues, at most `budget.n_node - 1` utterances.
      budget: the static sizes.
      modalities: feature modalities to carry.
      num_speakers: speaker slots; padding nodes get slot `num_speakers`.
      edges: "intra"/"inter" -> the `dialogue_edges` of each dialogue, in order.
      dims: modality -> feature width (needed when `dialogues` is empty, e.g. an idle device
        shard of the last batch; otherwise read from the first dialogue).

    Returns:
      A `DialogueBatch` of numpy arrays (shapes in `ambjax.graphs.batch`).
    """
    n_real = len(dialogues)
    lengths = np.array([len(d) for d in dialogues], np.int32)
    total = int(lengths.sum())
    if n_real > budget.n_graph - 1 or total > budget.n_node - 1:
        raise ConfigError(f"{n_real} dialogues / {total} utterances do not fit {budget} "
                         "(one spare node and graph are needed for padding)")
    if n_real and lengths.max() > budget.max_len:
        raise ConfigError(f"a dialogue of {lengths.max()} utterances exceeds max_len {budget.max_len}")
    nn_, ng = budget.n_node, budget.n_graph
    offsets = np.zeros(n_real, np.int32)
    offsets[1:] = np.cumsum(lengths)[:-1]
    features = {}
    for m in modalities:
        width = dims[m] if dims else dialogues[0].features[m].shape[1]
        x = np.zeros((nn_, width), np.float32)
        if n_real:
            x[:total] = np.concatenate([d.features[m] for d in dialogues])
        features[m] = x
    speaker = np.full(nn_, num_speakers, np.int32)
    label = np.zeros(nn_, np.int32)
    position = np.zeros(nn_, np.int32)
    graph = np.full(nn_, ng - 1, np.int32)
    mask = np.zeros(nn_, bool)
    if n_real:
        speaker[:total] = np.concatenate([d.speakers for d in dialogues])
        label[:total] = np.concatenate([d.labels for d in dialogues])
        graph[:total] = np.repeat(np.arange(n_real, dtype=np.int32), lengths)
        position[:total] = np.arange(total) - np.repeat(offsets, lengths)
        mask[:total] = True
    if budget.n_row is None:
        row, offset = np.arange(n_real, dtype=np.int32), np.zeros(n_real, np.int32)
    else:
        row, offset = pack_rows(lengths, budget.max_len)
        rows = _rows_used(row, lengths, budget.max_len)
        if rows > budget.n_row:
            raise ConfigError(f"{n_real} dialogues need {rows} rows of {budget.max_len} "
                             f"slots; the budget has {budget.n_row}")
    dense_index = np.full((budget.rows, budget.max_len), nn_ - 1, np.int32)
    if n_real:
        dense_index[np.repeat(row, lengths), position[:total] + np.repeat(offset, lengths)] = (
            np.arange(total, dtype=np.int32))
    n_node = np.zeros(ng, np.int32)
    n_node[:n_real] = lengths
    n_node[-1] += nn_ - total
    nodes = Nodes(features=features, speaker=speaker, label=label, position=position,
                  graph=graph, mask=mask)
    edge_sets = {kind: _pad_edges(edges[kind], offsets, n_edge, nn_, ng, kind, budget.band)
                 for kind, n_edge in (("intra", budget.n_edge_intra),
                                      ("inter", budget.n_edge_inter))}
    return DialogueBatch(nodes=nodes, intra=edge_sets["intra"], inter=edge_sets["inter"],
                         layout=DialogueLayout(dense_index=dense_index, n_node=n_node,
                                               band=budget.band,
                                               packed=budget.n_row is not None))


def stack_for_devices(batches: Sequence[DialogueBatch], axis: int = 0) -> DialogueBatch:
    """Stack same-budget batches along a new device (or seed) axis at position `axis`."""
    import jax  # local: keeps graph building importable without touching a backend
    return jax.tree.map(lambda *xs: np.stack(xs, axis=axis), *batches)


def shard_dialogues(dialogues: Sequence[Dialogue], n_devices: int) -> list[list[Dialogue]]:
    """Split a global batch into `n_devices` contiguous shards of near-equal dialogue count."""
    bounds = np.linspace(0, len(dialogues), n_devices + 1).round().astype(int)
    return [list(dialogues[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


class GraphBatcher:
    """Builds padded batches of one dataset; dialogue edges are computed once and cached.

    Args:
      dataset: the dataset.
      window: edge window (IEMOCAP 20, MELD 6).
      batch_size: dialogues per global batch.
      n_devices: shards per batch (every device of every process); with more than one,
        batches get a leading device axis and every shard uses the same budget.
      local_devices: [start, stop) of the shards this process builds and feeds (a
        multi-process run); default: all of them.
      modalities: modalities to carry (default: all of the dataset's).
      growth: node-budget ratio between buckets (see `plan_budgets`; None: one bucket).

    Example:
      >>> from ambjax.data import make_synthetic
      >>> data = make_synthetic("meld", scale=0.05, dims={"text": 4, "audio": 4, "visual": 4})
      >>> batcher = GraphBatcher(data, window=6, batch_size=8)
      >>> batches = list(batcher.batches("train", shuffle=True, seed=0, epoch=0))
      >>> sum(int(b.nodes.mask.sum()) for b in batches) == sum(
      ...     len(d) for d in data.split("train"))
      True
      >>> len({b.nodes.mask.shape for b in batches}) <= len(batcher.budgets)
      True
    """

    def __init__(self, dataset: DialogueDataset, *, window: int, batch_size: int,
                 n_devices: int = 1, modalities: Sequence[str] | None = None,
                 growth: float | None = 1.1, local_devices: tuple[int, int] | None = None):
        if batch_size < n_devices:
            raise ConfigError(f"batch_size {batch_size} is smaller than the {n_devices} devices")
        self.dataset = dataset
        self.window = window
        self.batch_size = batch_size
        self.n_devices = n_devices
        self.local_devices = local_devices or (0, n_devices)
        self.modalities = tuple(modalities or dataset.modalities)
        self.edges = {kind: {vid: dialogue_edges(d.speakers, window, kind)
                             for vid, d in dataset.dialogues.items()} for kind in GRAPH_KINDS}
        ratio = {kind: max(len(self.edges[kind][vid].types) / len(d)
                           for vid, d in dataset.dialogues.items()) for kind in GRAPH_KINDS}
        lengths = [len(d) for d in dataset.dialogues.values()]
        self.eval_nodes: int | None = None           # see `with_eval_nodes`
        self.budgets = plan_budgets(lengths, ratio, math.ceil(batch_size / n_devices),
                                    growth=growth, band=min(window, max(lengths) - 1))

    def budget_for(self, n_utterances: int, rows: int = 0) -> Budget:
        """The smallest budget holding `n_utterances` (plus the spare padding node) whose dense
        view has at least `rows` rows; when no packed one has enough rows (a batch that
        `with_packed_rows` did not plan), the smallest holding the utterances, unpacked."""
        fits = [b for b in self.budgets if b.n_node > n_utterances]
        if not fits:
            raise ConfigError(f"{n_utterances} utterances exceed the largest budget "
                              f"{self.budgets[-1]}")
        return next((b for b in fits if b.rows >= rows),
                    dataclasses.replace(fits[0], n_row=None))

    def build(self, dialogues: Sequence[Dialogue], budget: Budget | None = None) -> DialogueBatch:
        """One padded batch (stacked per device when n_devices > 1; only this process's
        devices), in the smallest budget that holds the whole global batch or in `budget`
        (e.g. an all-padding batch of each bucket: `build([], budget)`, for compiling ahead of
        time)."""
        start, stop = self.local_devices
        shards = shard_dialogues(dialogues, self.n_devices)[start:stop]
        budget = budget or self.budget_of(dialogues)
        batches = [build_batch(s, budget, modalities=self.modalities,
                               num_speakers=self.dataset.num_speakers, dims=self.dataset.dims,
                               edges={k: [self.edges[k][d.id] for d in s] for k in GRAPH_KINDS})
                   for s in shards]
        return batches[0] if self.n_devices == 1 else stack_for_devices(batches)

    def budget_of(self, dialogues: Sequence[Dialogue]) -> Budget:
        """The smallest budget holding `dialogues` as one batch (shards included)."""
        return self._budget_of_groups([dialogues])

    def rows_of(self, dialogues: Sequence[Dialogue]) -> int:
        """Rows of the dense view that `dialogues` need as one batch, packed (`rows_needed`;
        the most of any device shard)."""
        row_len = self.budgets[-1].max_len
        return max(rows_needed([len(d) for d in s], row_len)
                   for s in shard_dialogues(dialogues, self.n_devices))

    def _budget_of_groups(self, groups: Sequence[Sequence[Dialogue]],
                          at_least: int = 0) -> Budget:
        """The smallest budget holding each of `groups` (one step of several seeds), of at
        least `at_least` node slots."""
        n = max([sum(len(d) for d in s) for g in groups
                 for s in shard_dialogues(g, self.n_devices)] + [at_least - 1])
        packed = any(b.n_row is not None for b in self.budgets)
        return self.budget_for(n, max(self.rows_of(g) for g in groups) if packed else 0)

    def _orders(self, split: str, seeds: Sequence[int] | None, epoch: int) -> list[np.ndarray]:
        """The dialogue order of `split` for each seed's (seed, epoch) shuffle, or the split's
        own order alone when `seeds` is None."""
        n = len(self.dataset.splits[split])
        if seeds is None:
            return [np.arange(n)]
        return [np.random.default_rng([seed, epoch]).permutation(n) for seed in seeds]

    def _steps(self, split: str, orders: Sequence[np.ndarray], *, evaluation: bool = False):
        """Step by step: each order's dialogues of `split` and the budget of the step: the
        smallest that holds every one of them. `batch_size` dialogues at a time, except for
        `evaluation` (the split's own order) when `eval_nodes` is set: then packed
        (`_packed_runs`), every step in the smallest budget of at least `eval_nodes` slots."""
        dialogues = self.dataset.split(split)
        packed = bool(evaluation and self.eval_nodes)
        runs = self._packed_runs(dialogues, self.eval_nodes) if packed else [
            slice(start, start + self.batch_size)
            for start in range(0, len(dialogues), self.batch_size)]
        for run in runs:
            groups = [[dialogues[i] for i in order[run]] for order in orders]
            yield groups, self._budget_of_groups(groups, self.eval_nodes if packed else 0)

    def _packed_runs(self, dialogues: Sequence[Dialogue], n_node: int) -> list[slice]:
        """Consecutive runs of `dialogues`, each at most `batch_size` dialogues whose device
        shards hold fewer than `n_node` utterances (a longer dialogue alone)."""
        runs, start = [], 0
        for stop in range(1, len(dialogues) + 1):
            if stop - start > 1 and (stop - start > self.batch_size or max(
                    sum(len(d) for d in s) for s in shard_dialogues(
                        dialogues[start:stop], self.n_devices)) >= n_node):
                runs.append(slice(start, stop - 1))
                start = stop - 1
        return runs + [slice(start, len(dialogues))] if dialogues else runs

    def _run(self, seeds: Sequence[int], epochs: int):
        """The steps of a run of `epochs` epochs in the order it takes them, as (kind, groups,
        budget): "train" for the train steps of `seed_batches("train", seeds, epoch=e)`,
        e < `epochs`, and after the first epoch's "eval" for the `batches` of valid and test
        (once: the same every epoch; alone when `epochs` is 0)."""
        def evaluation():
            for split in ("valid", "test"):
                for groups, budget in self._steps(split, self._orders(split, None, 0),
                                                  evaluation=True):
                    yield "eval", groups, budget

        for epoch in range(epochs):
            for groups, budget in self._steps("train", self._orders("train", seeds, epoch)):
                yield "train", groups, budget
            if epoch == 0:
                yield from evaluation()
        if epochs == 0:
            yield from evaluation()

    def run_steps(self, seeds: Sequence[int], epochs: int) -> dict[Budget, dict[str, int]]:
        """Steps per budget over a run of `epochs` epochs: {budget: {"train": n, "eval": m}},
        the train steps of `seed_batches("train", seeds, epoch=e)` for e < `epochs` and the
        `batches` of valid and test once per epoch (computed from lengths alone, in
        milliseconds)."""
        counts: dict[Budget, dict[str, int]] = {}
        for kind, _, budget in self._run(seeds, epochs):
            kinds = counts.setdefault(budget, {})
            kinds[kind] = kinds.get(kind, 0) + (1 if kind == "train" else max(1, epochs))
        return counts

    def budgets_used(self, seeds: Sequence[int], epochs: int) -> dict[str, list[Budget]]:
        """The budgets that a run of `epochs` epochs (`run_steps`) uses, smallest first:
        {"train": [...], "eval": [...]} (what it has to compile; `use_order` sorted)."""
        order = self.use_order(seeds, epochs)
        return {kind: sorted(b for k, b in order if k == kind) for kind in ("train", "eval")}

    def use_order(self, seeds: Sequence[int], epochs: int) -> list[tuple[str, Budget]]:
        """The (kind, budget) pairs a run of `epochs` epochs uses ("train" or "eval"; the
        steps of `run_steps`), in the order it first needs them: the order in which to compile
        their programs."""
        return list(dict.fromkeys((kind, budget) for kind, _, budget in self._run(seeds, epochs)))

    def with_packed_rows(self, seeds: Sequence[int], epochs: int) -> "GraphBatcher":
        """This batcher with each used budget's dense view packed (`Budget.n_row`): as many
        rows as the most that any step of a run of `epochs` epochs (the batches of
        `run_steps`) needs in it, where that is fewer than its dialogue slots. The context
        encoder's attention then works on those rows instead of one per dialogue slot (an
        IEMOCAP-shaped batch of 16 dialogues fits in 9-11 rows instead of 17; a MELD-shaped one
        of 64 in 6-23 instead of 65). A batch that needs more rows than its budget has (one
        the run did not plan) gets the smallest unpacked budget that holds it."""
        need: dict[Budget, int] = {}
        for _, groups, budget in self._run(seeds, epochs):
            need[budget] = max(need.get(budget, 0), max(self.rows_of(g) for g in groups))
        return self.with_budgets([dataclasses.replace(b, n_row=need[b])
                                  if b in need and need[b] < b.n_graph else b
                                  for b in self.budgets])

    def with_eval_nodes(self, n_node: int | None) -> "GraphBatcher":
        """This batcher with the unshuffled batches of a split (`batches(split)`, evaluation)
        packed up to `n_node` node slots per device shard (one spare padding node included;
        at most `batch_size` dialogues still) and all of them in the smallest budget of at
        least `n_node` slots: one padding bucket, so one program to compile for evaluation,
        instead of every bucket that `batch_size` consecutive dialogues happen to need. None:
        `batch_size` at a time, each in the smallest budget that holds it."""
        other = copy.copy(self)
        other.eval_nodes = n_node
        return other

    def with_packed_eval(self) -> "GraphBatcher":
        """`with_eval_nodes` of the budget of this batcher's ladder (e.g. the buckets a run's
        train steps keep, `merge_budgets`) in which valid's and test's packed batches have
        the fewest node slots in all, among those that hold every such dialogue and are no
        larger than what their batches need at `batch_size` dialogues at a time (so no
        evaluation step needs more memory than one of those would)."""
        unpacked = self.with_eval_nodes(None)
        splits = [self.dataset.split(split) for split in ("valid", "test")]
        needed = [budget for split in ("valid", "test")
                  for _, budget in unpacked._steps(split, self._orders(split, None, 0),
                                                   evaluation=True)]
        if not needed:
            return unpacked
        longest = max(len(d) for dialogues in splits for d in dialogues)
        slots = {b.n_node: sum(len(self._packed_runs(dialogues, b.n_node))
                               for dialogues in splits) * b.n_node
                 for b in self.budgets if longest < b.n_node <= max(needed).n_node}
        return self.with_eval_nodes(min(slots, key=lambda n: (slots[n], n)))

    def with_budgets(self, budgets: Sequence[Budget]) -> "GraphBatcher":
        """This batcher with another budget ladder (sorted by size; e.g. `merge_budgets`)."""
        other = copy.copy(self)
        other.budgets = tuple(budgets)
        return other

    def seed_batches(self, split: str, seeds: Sequence[int], *,
                     epoch: int = 0) -> Iterator[DialogueBatch]:
        """Shuffled batches of several runs at once, one per seed, stacked on a seed axis.

        Step i holds, for each seed, the batch that `batches(split, shuffle=True, seed=seed,
        epoch=epoch)` yields at step i, all padded to the largest budget among them: arrays
        [S, ...] on one device, [n_devices, S, ...] with several (device axis first, for
        `jax.pmap` over a `jax.vmap`ped step).
        """
        for groups, budget in self._steps(split, self._orders(split, seeds, epoch)):
            batches = [self.build(g, budget) for g in groups]
            yield stack_for_devices(batches, axis=1 if self.n_devices > 1 else 0)

    def batches(self, split: str, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0) -> Iterator[DialogueBatch]:
        """Batches of one split; shuffled by (seed, epoch) when `shuffle`. The last batch may
        hold fewer dialogues (padding graphs fill it); no dialogue is dropped. Unshuffled
        batches are packed by node count when `with_eval_nodes` set a limit."""
        for (group,), budget in self._steps(split, self._orders(split, [seed] if shuffle
                                                                 else None, epoch),
                                            evaluation=not shuffle):
            yield self.build(group, budget)

    def num_batches(self, split: str) -> int:
        """Batches of `split` at `batch_size` dialogues each (the shuffled batches of an
        epoch; unshuffled ones packed by `with_eval_nodes` may be more)."""
        return math.ceil(len(self.dataset.splits[split]) / self.batch_size)
