"""Dialogue graphs: typed edges, padding budgets, padded `jraph.GraphsTuple` batches."""

from ambjax.graphs.batch import DialogueBatch, DialogueLayout, EdgeSet, Nodes
from ambjax.graphs.batching import (Budget, GraphBatcher, build_batch, merge_budgets, pack_rows,
                                    plan_budgets, rows_needed, shard_dialogues,
                                    stack_for_devices)
from ambjax.graphs.edges import (GRAPH_KINDS, NUM_EDGE_TYPES, DialogueEdges, dialogue_edges,
                                 edges_from_relation_matrix, relation_matrix)

__all__ = [
    "DialogueBatch", "DialogueLayout", "EdgeSet", "Nodes", "Budget", "GraphBatcher",
    "build_batch", "merge_budgets", "pack_rows", "plan_budgets", "rows_needed",
    "shard_dialogues", "stack_for_devices",
    "GRAPH_KINDS",
    "NUM_EDGE_TYPES", "DialogueEdges", "dialogue_edges", "edges_from_relation_matrix",
    "relation_matrix",
]
