"""Padded `jraph.GraphsTuple` batches of dialogues with fixed, bucketed budgets.

A `DialogueBatch` holds two graphs over the same nodes: `intra` (intra-speaker edges; it also
carries the node and per-dialogue arrays) and `inter` (inter-speaker edges; `nodes` and `globals`
are None so that features travel to the device once). Shapes, with Nn = budget.n_node,
G = budget.n_graph, L = budget.max_len, E = budget.n_edge_intra / n_edge_inter:

    intra.nodes["features"][m]  float32 [Nn, D_m]   per-modality features (0 on padding)
    intra.nodes["speaker"]      int32 [Nn]          speaker slot; padding nodes: num_speakers
    intra.nodes["label"]        int32 [Nn]          class; padding nodes: 0 (always mask)
    intra.nodes["position"]     int32 [Nn]          index of the utterance in its dialogue
    intra.nodes["graph"]        int32 [Nn]          dialogue index in the batch (padding: G - 1)
    intra.nodes["mask"]         bool [Nn]           True on real utterances
    intra.globals["mask"]       bool [G]            True on real dialogues
    intra.globals["length"]     int32 [G]           utterances per dialogue (0 on padding)
    intra.globals["dense_index"] int32 [G, L]       node id of utterance p of dialogue g
                                                    (padding entries: Nn - 1, a padding node)
    intra.globals["band_offsets"] int32 [2B + 1]    -B..B, only when the budget has a band B:
                                                    every edge has |sender - receiver| <= B
    {intra,inter}.edges["type"] int32 [E]           edge type 1..5; padding edges 0
    {intra,inter}.senders / receivers int32 [E]     padding edges: Nn - 1 -> Nn - 1
    n_node int32 [G], n_edge int32 [G]              the last graph holds all padding

Padding nodes, edges and graphs never touch a real node: every padding edge runs between
padding nodes, and the last node (Nn - 1) is always padding (budgets keep one spare node).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, NamedTuple, Sequence

import jraph
import numpy as np

from ambjax.data.dataset import Dialogue, DialogueDataset
from ambjax.graphs.edges import GRAPH_KINDS, DialogueEdges, dialogue_edges


class DialogueBatch(NamedTuple):
    """Padded batch of dialogues: intra- and inter-speaker graphs over shared nodes."""

    intra: jraph.GraphsTuple
    inter: jraph.GraphsTuple

    def graph(self, kind: str, nodes=None) -> jraph.GraphsTuple:
        """The `kind` ("intra"/"inter") graph, with `nodes` (default: the batch's nodes)."""
        g = self.intra if kind == "intra" else self.inter
        return g._replace(nodes=self.intra.nodes if nodes is None else nodes,
                          globals=self.intra.globals)

    @property
    def nodes(self) -> dict:
        return self.intra.nodes

    @property
    def globals(self) -> dict:
        return self.intra.globals


@dataclasses.dataclass(frozen=True, order=True)
class Budget:
    """Static sizes of one padded batch (per device).

    `band`: when set, every edge joins nodes at most `band` apart in the flat node order (the
    edge window: a dialogue's nodes are contiguous), which lets graph aggregation run on banded
    blocks (`ambjax.nn.aggregate`); None: no such promise.
    """

    n_node: int
    n_edge_intra: int
    n_edge_inter: int
    n_graph: int
    max_len: int
    band: int | None = None


def _round_up(x: int, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def plan_budgets(lengths: Sequence[int], edges_per_node: dict[str, float], graphs_per_batch: int,
                 *, growth: float | None = 1.25, band: int | None = None) -> tuple[Budget, ...]:
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


def _pad_edges(edge_list: Sequence[DialogueEdges], offsets: np.ndarray, n_edge: int,
               n_node: int, n_graph: int, kind: str, band: int | None) -> jraph.GraphsTuple:
    counts = np.array([len(e.types) for e in edge_list], np.int32)
    total = int(counts.sum())
    if total > n_edge:
        raise ValueError(f"{kind} edges {total} exceed the budget {n_edge}")
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
            raise ValueError(f"{kind} edges of dialogue {i} join utterances {int(reach.max())} "
                             f"apart, beyond the budget's band {band}")
    n_edge_per_graph = np.zeros(n_graph, np.int32)
    n_edge_per_graph[:len(counts)] = counts
    n_edge_per_graph[-1] += n_edge - total
    return jraph.GraphsTuple(nodes=None, edges={"type": types}, senders=senders,
                             receivers=receivers, globals=None, n_node=None,
                             n_edge=n_edge_per_graph)


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
      A `DialogueBatch` of numpy arrays (see the module docstring for shapes).
    """
    n_real = len(dialogues)
    lengths = np.array([len(d) for d in dialogues], np.int32)
    total = int(lengths.sum())
    if n_real > budget.n_graph - 1 or total > budget.n_node - 1:
        raise ValueError(f"{n_real} dialogues / {total} utterances do not fit {budget} "
                         "(one spare node and graph are needed for padding)")
    if n_real and lengths.max() > budget.max_len:
        raise ValueError(f"a dialogue of {lengths.max()} utterances exceeds max_len {budget.max_len}")
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
    dense_index = np.full((ng, budget.max_len), nn_ - 1, np.int32)
    if n_real:
        dense_index[graph[:total], position[:total]] = np.arange(total, dtype=np.int32)
    n_node = np.zeros(ng, np.int32)
    n_node[:n_real] = lengths
    n_node[-1] += nn_ - total
    graph_mask = np.zeros(ng, bool)
    graph_mask[:n_real] = True
    length = np.zeros(ng, np.int32)
    length[:n_real] = lengths
    nodes = {"features": features, "speaker": speaker, "label": label, "position": position,
             "graph": graph, "mask": mask}
    glob = {"mask": graph_mask, "length": length, "dense_index": dense_index}
    if budget.band is not None:
        glob["band_offsets"] = np.arange(-budget.band, budget.band + 1, dtype=np.int32)
    graphs = {}
    for kind, n_edge in (("intra", budget.n_edge_intra), ("inter", budget.n_edge_inter)):
        graphs[kind] = _pad_edges(edges[kind], offsets, n_edge, nn_, ng, kind,
                                  budget.band)._replace(n_node=n_node)
    return DialogueBatch(intra=graphs["intra"]._replace(nodes=nodes, globals=glob),
                         inter=graphs["inter"])


def stack_for_devices(batches: Sequence[DialogueBatch]) -> DialogueBatch:
    """Stack same-budget batches along a new leading device axis (for `jax.pmap`)."""
    import jax  # local: keeps graph building importable without touching a backend
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


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
      n_devices: shards per batch; with more than one, batches get a leading device axis and
        every shard uses the same budget.
      modalities: modalities to carry (default: all of the dataset's).
      growth: node-budget ratio between buckets (see `plan_budgets`; None: one bucket).

    Example:
      >>> from ambjax.data import make_synthetic
      >>> data = make_synthetic("meld", scale=0.05, dims={"text": 4, "audio": 4, "visual": 4})
      >>> batcher = GraphBatcher(data, window=6, batch_size=8)
      >>> batches = list(batcher.batches("train", shuffle=True, seed=0, epoch=0))
      >>> sum(int(b.globals["mask"].sum()) for b in batches) == len(data.splits["train"])
      True
      >>> len({b.nodes["mask"].shape for b in batches}) <= len(batcher.budgets)
      True
    """

    def __init__(self, dataset: DialogueDataset, *, window: int, batch_size: int,
                 n_devices: int = 1, modalities: Sequence[str] | None = None,
                 growth: float | None = 1.25):
        if batch_size < n_devices:
            raise ValueError(f"batch_size {batch_size} is smaller than the {n_devices} devices")
        self.dataset = dataset
        self.window = window
        self.batch_size = batch_size
        self.n_devices = n_devices
        self.modalities = tuple(modalities or dataset.modalities)
        self.edges = {kind: {vid: dialogue_edges(d.speakers, window, kind)
                             for vid, d in dataset.dialogues.items()} for kind in GRAPH_KINDS}
        ratio = {kind: max(len(self.edges[kind][vid].types) / len(d)
                           for vid, d in dataset.dialogues.items()) for kind in GRAPH_KINDS}
        lengths = [len(d) for d in dataset.dialogues.values()]
        self.budgets = plan_budgets(lengths, ratio, math.ceil(batch_size / n_devices),
                                    growth=growth, band=min(window, max(lengths) - 1))

    def budget_for(self, n_utterances: int) -> Budget:
        """The smallest budget holding `n_utterances` (plus the spare padding node)."""
        for b in self.budgets:
            if b.n_node > n_utterances:
                return b
        raise ValueError(f"{n_utterances} utterances exceed the largest budget {self.budgets[-1]}")

    def build(self, dialogues: Sequence[Dialogue]) -> DialogueBatch:
        """One padded batch (stacked per device when n_devices > 1)."""
        shards = shard_dialogues(dialogues, self.n_devices)
        budget = self.budget_for(max(sum(len(d) for d in s) for s in shards))
        batches = [build_batch(s, budget, modalities=self.modalities,
                               num_speakers=self.dataset.num_speakers, dims=self.dataset.dims,
                               edges={k: [self.edges[k][d.id] for d in s] for k in GRAPH_KINDS})
                   for s in shards]
        return batches[0] if self.n_devices == 1 else stack_for_devices(batches)

    def batches(self, split: str, *, shuffle: bool = False, seed: int = 0,
                epoch: int = 0) -> Iterator[DialogueBatch]:
        """Batches of one split; shuffled by (seed, epoch) when `shuffle`. The last batch may
        hold fewer dialogues (padding graphs fill it); no dialogue is dropped."""
        dialogues = self.dataset.split(split)
        order = (np.random.default_rng([seed, epoch]).permutation(len(dialogues)) if shuffle
                 else np.arange(len(dialogues)))
        for start in range(0, len(order), self.batch_size):
            yield self.build([dialogues[i] for i in order[start:start + self.batch_size]])

    def num_batches(self, split: str) -> int:
        return math.ceil(len(self.dataset.splits[split]) / self.batch_size)
