"""Typed dialogue edges (DESIGN.md section 2), vectorised with numpy.

Edges run j -> i (sender j, receiver i) for |i - j| <= window inside one dialogue. Types:

- intra-speaker graph (s(i) == s(j)): 1 self, 2 past (j < i), 3 future (j > i);
- inter-speaker graph (s(i) != s(j), plus the self-loop): 1 self, 4 future (j > i), 5 past (j < i);
- 0 is reserved for "no edge" and padding.

Edges are ordered by receiver, then sender.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ambjax.errors import ConfigError

GRAPH_KINDS = ("intra", "inter")
NUM_EDGE_TYPES = 6  # 0 (none/padding) and 1..5


class DialogueEdges(NamedTuple):
    """Edges of one dialogue graph: int32 [E] `senders`, `receivers` (local node ids), `types`."""

    senders: np.ndarray
    receivers: np.ndarray
    types: np.ndarray


def dialogue_edges(speakers: np.ndarray, window: int, graph: str) -> DialogueEdges:
    """The intra- or inter-speaker edges of one dialogue.

    Args:
      speakers: int [N] speaker slot per utterance.
      window: maximum |i - j| of an edge (>= 0).
      graph: "intra" or "inter".

    Returns:
      `DialogueEdges` with int32 arrays of equal length E, sorted by (receiver, sender).

    Example:
      >>> e = dialogue_edges([0, 0, 1], window=2, graph="intra")
      >>> e.senders.tolist(), e.receivers.tolist(), e.types.tolist()
      ([0, 1, 0, 1, 2], [0, 0, 1, 1, 2], [1, 3, 2, 1, 1])
    """
    if graph not in GRAPH_KINDS:
        raise ConfigError(f"graph must be 'intra' or 'inter', got {graph!r}")
    if window < 0:
        raise ConfigError(f"window must be >= 0, got {window}")
    speakers = np.asarray(speakers)
    n = speakers.shape[0]
    w = min(int(window), max(n - 1, 0))
    receivers = np.repeat(np.arange(n), 2 * w + 1).reshape(n, 2 * w + 1)
    senders = receivers + np.arange(-w, w + 1)[None, :]
    inside = (senders >= 0) & (senders < n)
    senders_c = np.clip(senders, 0, max(n - 1, 0))
    same = speakers[receivers] == speakers[senders_c]
    is_self = senders == receivers
    later = senders > receivers
    if graph == "intra":
        keep = inside & same
        types = np.where(is_self, 1, np.where(later, 3, 2))
    else:
        keep = inside & (~same | is_self)
        types = np.where(is_self, 1, np.where(later, 4, 5))
    return DialogueEdges(senders[keep].astype(np.int32), receivers[keep].astype(np.int32),
                         types[keep].astype(np.int32))


def relation_matrix(speakers: np.ndarray, window: int, graph: str) -> np.ndarray:
    """Dense N x N edge-type matrix in the release's convention.

    Entry [i, j] is the type of edge j -> i (row i = receiver, column j = sender), 0 = no edge.
    intra uses {0, 1, 2, 3}; inter uses {0, 1, 4, 5}.

    Args:
      speakers: int [N] speaker slot per utterance.
      window: maximum |i - j| of an edge.
      graph: "intra" or "inter".

    Returns:
      int32 [N, N].

    Example:
      >>> relation_matrix([0, 1, 0], window=1, graph="intra")
      array([[1, 0, 0],
             [0, 1, 0],
             [0, 0, 1]], dtype=int32)
      >>> relation_matrix([0, 1, 0], window=1, graph="inter")
      array([[1, 4, 0],
             [5, 1, 4],
             [0, 5, 1]], dtype=int32)
    """
    e = dialogue_edges(speakers, window, graph)
    n = np.asarray(speakers).shape[0]
    out = np.zeros((n, n), np.int32)
    out[e.receivers, e.senders] = e.types
    return out


def edges_from_relation_matrix(matrix: np.ndarray) -> DialogueEdges:
    """Sparse edges of a dense [N, N] relation matrix (row = receiver); the inverse of
    `relation_matrix`. Non-zero entries become edges."""
    receivers, senders = np.nonzero(np.asarray(matrix))
    return DialogueEdges(senders.astype(np.int32), receivers.astype(np.int32),
                         np.asarray(matrix)[receivers, senders].astype(np.int32))
