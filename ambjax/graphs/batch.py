"""The padded batch as typed pytrees: `DialogueBatch` = `Nodes` + two `EdgeSet`s + a
`DialogueLayout`.

Shapes, with N = budget.n_node, G = budget.n_graph, L = budget.max_len, E = the edge budget of
each graph kind, D_m = the width of modality m:

    nodes.features[m]     float32 [N, D_m]  per-modality features (0 on padding)
    nodes.speaker         int32 [N]         speaker slot; padding nodes: num_speakers
    nodes.label           int32 [N]         class; padding nodes: 0 (always mask)
    nodes.position        int32 [N]         index of the utterance in its dialogue
    nodes.graph           int32 [N]         dialogue index in the batch (padding: G - 1)
    nodes.mask            bool [N]          True on real utterances
    intra / inter         EdgeSet           intra- and inter-speaker edges over the same nodes
      .senders, .receivers int32 [E]        padding edges: N - 1 -> N - 1
      .types              int32 [E]         edge type 1..5; padding edges 0
      .n_edge             int32 [G]         edges per dialogue (the last graph holds the padding)
    layout.dense_index    int32 [R, L]      node at slot (row, column) of the dense
                                            per-dialogue view (padding entries: N - 1, a
                                            padding node); R = budget.rows: one row per
                                            dialogue slot (R = G, dialogue g's utterance p at
                                            (g, p)), or, `packed`, whole dialogues packed
                                            several to a row
    layout.n_node         int32 [G]         utterances per dialogue (the last graph holds the
                                            padding nodes); jraph's `n_node`
    layout.band           static int|None   every edge has |sender - receiver| <= band
    layout.packed         static bool       rows of `dense_index` may hold several dialogues

`band` and `packed` are static metadata (part of the tree structure, not an array): batches
with another band compile another program. Every array above is read by the model or by
jraph's conventions (`n_node` / `n_edge`, so `batch.graph(kind)` is a complete
`jraph.GraphsTuple`).

Padding nodes, edges and graphs never touch a real node: every padding edge runs between padding
nodes, and the last node (N - 1) is always padding (budgets keep one spare node).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jraph

from ambjax.errors import ConfigError
from ambjax.graphs.edges import GRAPH_KINDS


@flax.struct.dataclass
class Nodes:
    """Per-utterance arrays of a padded batch (shapes in the module docstring)."""

    features: dict[str, Any]
    speaker: Any
    label: Any
    position: Any
    graph: Any
    mask: Any


@flax.struct.dataclass
class EdgeSet:
    """One graph's typed edges over the batch's nodes (shapes in the module docstring)."""

    senders: Any
    receivers: Any
    types: Any
    n_edge: Any


@flax.struct.dataclass
class DialogueLayout:
    """Where each dialogue's utterances sit in the flat node order.

    Graph kernels use it to aggregate over dense per-dialogue blocks or over the band of the
    flat order (`ambjax.nn.kernels.aggregate`), and the context encoder to attend inside
    dialogues. `band` and `packed` are static.
    """

    dense_index: Any
    n_node: Any
    band: int | None = flax.struct.field(pytree_node=False, default=None)
    packed: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def n_graph(self) -> int:
        """G, the number of dialogue slots (static)."""
        return self.n_node.shape[-1]


@flax.struct.dataclass
class DialogueBatch:
    """A padded batch of dialogues: nodes shared by the intra- and inter-speaker graphs.

    A pytree of arrays (jit/vmap/pmap-friendly); `layout.band` is static. With a leading device
    axis (from `stack_for_devices`) every array gains that axis.
    """

    nodes: Nodes
    intra: EdgeSet
    inter: EdgeSet
    layout: DialogueLayout

    @property
    def n_graph(self) -> int:
        return self.layout.n_graph

    def edges(self, kind: str) -> EdgeSet:
        """The `kind` edge set; `kind` must be "intra" or "inter"."""
        if kind not in GRAPH_KINDS:
            raise ConfigError(f"unknown graph kind {kind!r}; expected one of {GRAPH_KINDS}")
        return self.intra if kind == "intra" else self.inter

    def graph(self, kind: str, nodes: jax.Array | None = None) -> jraph.GraphsTuple:
        """The `kind` ("intra"/"inter") graph as a `jraph.GraphsTuple`.

        Args:
          kind: "intra" or "inter" (anything else raises ValueError).
          nodes: node features [N, F] (default: the batch's `Nodes`).

        Returns:
          GraphsTuple with `edges` int32 [E] (the edge types), `globals` the batch's
          `DialogueLayout` (which the graph kernels use to pick the banded / dense path).
        """
        e = self.edges(kind)
        return jraph.GraphsTuple(nodes=self.nodes if nodes is None else nodes, edges=e.types,
                                 senders=e.senders, receivers=e.receivers,
                                 globals=self.layout, n_node=self.layout.n_node,
                                 n_edge=e.n_edge)
