"""Dialogue edges, relation matrices, padded batches and buckets."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from ambjax.data import make_synthetic
from ambjax.errors import ConfigError
from ambjax.graphs import (Budget, GraphBatcher, dialogue_edges, edges_from_relation_matrix,
                           merge_budgets, pack_rows, relation_matrix, rows_needed,
                           stack_for_devices)

SPEAKERS = [0, 1, 1, 0, 0, 1, 0]

# Worked by hand from DESIGN.md section 2 with window 2 (row i = receiver, column j = sender).
INTRA_W2 = np.array([
    [1, 0, 0, 0, 0, 0, 0],
    [0, 1, 3, 0, 0, 0, 0],
    [0, 2, 1, 0, 0, 0, 0],
    [0, 0, 0, 1, 3, 0, 0],
    [0, 0, 0, 2, 1, 0, 3],
    [0, 0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 2, 0, 1]])
INTER_W2 = np.array([
    [1, 4, 4, 0, 0, 0, 0],
    [5, 1, 0, 4, 0, 0, 0],
    [5, 0, 1, 4, 4, 0, 0],
    [0, 5, 5, 1, 0, 4, 0],
    [0, 0, 5, 0, 1, 4, 0],
    [0, 0, 0, 5, 5, 1, 4],
    [0, 0, 0, 0, 0, 5, 1]])


def test_hand_worked_relation_matrices():
    np.testing.assert_array_equal(relation_matrix(SPEAKERS, 2, "intra"), INTRA_W2)
    np.testing.assert_array_equal(relation_matrix(SPEAKERS, 2, "inter"), INTER_W2)


def test_window_zero_and_large():
    for g in ("intra", "inter"):
        np.testing.assert_array_equal(relation_matrix(SPEAKERS, 0, g), np.eye(7, dtype=int))
    full = relation_matrix(SPEAKERS, 100, "intra")
    assert full[6, 0] == 2 and full[0, 6] == 3 and full[6, 1] == 0


@pytest.mark.parametrize("window", [0, 1, 3, 20])
def test_sparse_edges_match_dense_and_cover_both_directions(window):
    rng = np.random.default_rng(window)
    speakers = rng.integers(0, 3, size=25)
    for g in ("intra", "inter"):
        e = dialogue_edges(speakers, window, g)
        dense = relation_matrix(speakers, window, g)
        assert len(e.types) == np.count_nonzero(dense)
        np.testing.assert_array_equal(dense[e.receivers, e.senders], e.types)
        assert (np.abs(e.receivers - e.senders) <= window).all()
        same = speakers[e.receivers] == speakers[e.senders]
        selfloop = e.receivers == e.senders
        if g == "intra":
            assert same.all()
            np.testing.assert_array_equal(e.types, np.where(selfloop, 1, np.where(
                e.senders > e.receivers, 3, 2)))
        else:
            assert (~same | selfloop).all()
            np.testing.assert_array_equal(e.types, np.where(selfloop, 1, np.where(
                e.senders > e.receivers, 4, 5)))
        # an edge j -> i exists iff i -> j exists (with the mirrored type)
        assert ((dense > 0) == (dense.T > 0)).all()
        back = edges_from_relation_matrix(dense)
        np.testing.assert_array_equal(relation_matrix(speakers, window, g)[back.receivers, back.senders], back.types)


def test_padded_batch_structure(iemocap_small):
    gb = GraphBatcher(iemocap_small, window=3, batch_size=3)
    dialogues = iemocap_small.split("train")[:3]
    batch = gb.build(dialogues)
    nodes, layout = batch.nodes, batch.layout
    n_real = sum(len(d) for d in dialogues)
    n_node = nodes.mask.shape[0]
    assert nodes.mask.sum() == n_real and nodes.mask[:n_real].all()
    assert layout.n_node.sum() == n_node and batch.n_graph == 4
    assert layout.n_node[:3].tolist() == [len(d) for d in dialogues]
    assert layout.band == 3 and not hasattr(batch, "globals")
    with pytest.raises(ValueError, match="unknown graph kind"):
        batch.graph("Intra")
    for kind in ("intra", "inter"):
        g = batch.graph(kind)
        real_edge = g.edges > 0
        assert real_edge.sum() == sum(len(gb.edges[kind][d.id].types) for d in dialogues)
        # padding edges never touch a real node; real edges stay inside one dialogue
        assert not nodes.mask[g.senders[~real_edge]].any()
        assert not nodes.mask[g.receivers[~real_edge]].any()
        assert (nodes.graph[g.senders[real_edge]] == nodes.graph[g.receivers[real_edge]]).all()
        assert g.n_edge.sum() == len(g.senders)
    # dense index round-trips every real node; its padding points at a padding node
    dense = layout.dense_index
    for gi, d in enumerate(dialogues):
        idx = dense[gi, :len(d)]
        np.testing.assert_array_equal(nodes.label[idx], d.labels)
        np.testing.assert_array_equal(nodes.features["audio"][idx], d.features["audio"])
        assert not nodes.mask[dense[gi, len(d):]].any()
    assert (nodes.speaker[~nodes.mask] == iemocap_small.num_speakers).all()
    assert (nodes.features["text"][~nodes.mask] == 0).all()


@pytest.mark.parametrize("preset,window,batch_size", [("iemocap", 20, 16), ("meld", 6, 64)])
def test_few_distinct_shapes_per_epoch(preset, window, batch_size):
    ds = make_synthetic(preset, dims={"text": 4, "audio": 4, "visual": 4})
    gb = GraphBatcher(ds, window=window, batch_size=batch_size)
    for epoch in range(2):
        shapes = {b.nodes.mask.shape + b.intra.senders.shape + b.inter.senders.shape
                  for split in ("train", "valid", "test")
                  for b in gb.batches(split, shuffle=split == "train", epoch=epoch)}
        assert len(shapes) <= 6, shapes


def test_every_dialogue_once_per_epoch_and_device_stacking(meld_small):
    gb = GraphBatcher(meld_small, window=6, batch_size=8, n_devices=4)
    total = 0
    for batch in gb.batches("train", shuffle=True, seed=1, epoch=0):
        assert batch.nodes.mask.shape[0] == 4 and batch.intra.senders.shape[0] == 4
        total += int((batch.layout.n_node[:, :-1] > 0).sum())
    assert total == len(meld_small.splits["train"])
    one = GraphBatcher(meld_small, window=6, batch_size=2)
    b = one.build(meld_small.split("test")[:2])
    stacked = stack_for_devices([b, b])
    assert stacked.nodes.features["text"].shape == (2,) + b.nodes.features["text"].shape


def _ladder_cost(kept, used, steps, cost):
    """Compile cost plus padded node-steps of running each used budget on the smallest kept
    budget that holds it (the brute-force reference of `merge_budgets`)."""
    programs, padded = set(), 0
    for b in used:
        target = min(k for k in kept if k.n_node >= b.n_node)
        programs.update((target, kind) for kind, n in steps[b].items() if n)
        padded += sum(steps[b].values()) * (target.n_node - b.n_node)
    return cost * len(programs) + padded


@pytest.mark.parametrize("trial", range(40))
def test_merged_budgets_minimise_compile_plus_padding(trial):
    rng = np.random.default_rng(trial)
    ladder = tuple(Budget(n, n, n, 5, 20) for n in np.cumsum(rng.integers(16, 200, size=9)))
    used = sorted(rng.choice(len(ladder), size=rng.integers(2, 8), replace=False))
    steps = {ladder[i]: {k: int(rng.integers(0, 60) * (rng.random() < 0.7))
                         for k in ("train", "eval")} for i in used}
    steps[ladder[used[-1]]]["train"] += 1          # the largest used budget is used
    used_budgets = [b for b in ladder if sum(steps.get(b, {}).values())]
    cost = float(rng.choice([0.0, 500.0, 3000.0, 20000.0]))
    merged = merge_budgets(ladder, steps, cost)
    assert merged == tuple(sorted(merged)) and used_budgets[-1] in merged
    assert all(b in merged for b in ladder if b > used_budgets[-1])
    if cost == 0:
        assert merged == ladder
        return
    best = min(_ladder_cost(kept + (used_budgets[-1],), used_budgets, steps, cost)
               for r in range(len(used_budgets))
               for kept in itertools.combinations(used_budgets[:-1], r))
    assert _ladder_cost(merged, used_budgets, steps, cost) == pytest.approx(best)


def test_a_merged_ladder_keeps_every_batch_and_fewer_shapes():
    ds = make_synthetic("meld", dims={"text": 4, "audio": 4, "visual": 4})
    gb = GraphBatcher(ds, window=6, batch_size=64)
    steps = gb.run_steps([0], epochs=3)
    merged = gb.with_budgets(merge_budgets(gb.budgets, steps, 20000.0))
    assert len(merged.budgets_used([0], 3)["train"]) < len(gb.budgets_used([0], 3)["train"])
    for split in ("train", "test"):
        before = list(gb.batches(split, shuffle=True, seed=0, epoch=2))
        after = list(merged.batches(split, shuffle=True, seed=0, epoch=2))
        assert [b.nodes.mask.sum() for b in before] == [b.nodes.mask.sum() for b in after]
        assert all(a.nodes.mask.shape >= b.nodes.mask.shape for a, b in zip(after, before))


@pytest.mark.parametrize("n_devices", [1, 2])
def test_evaluation_packs_into_one_bucket(n_devices):
    ds = make_synthetic("meld", dims={"text": 4, "audio": 4, "visual": 4})
    gb = GraphBatcher(ds, window=6, batch_size=64, n_devices=n_devices)
    before = gb.budgets_used([0], 3)["eval"]
    packed = gb.with_packed_eval()
    assert len(before) > 1
    (bucket,) = packed.budgets_used([0], 3)["eval"]                     # one eval program
    assert bucket.n_node == packed.eval_nodes and bucket <= max(before)

    def slots(batcher):                          # node slots of the evaluation passes
        return sum(b.nodes.mask.size for s in ("valid", "test") for b in batcher.batches(s))

    assert slots(packed) <= slots(gb)
    for split in ("valid", "test"):
        batches = list(packed.batches(split))
        for b in batches:                        # every shard under the limit, <= batch_size
            per_shard = np.asarray(b.nodes.mask).reshape(n_devices, -1).sum(-1)
            assert per_shard.max() < packed.eval_nodes
            assert (np.asarray(b.layout.n_node)[..., :-1] > 0).sum() <= 64
        real = [int(np.asarray(b.nodes.mask).sum()) for b in batches]
        assert sum(real) == sum(len(d) for d in ds.split(split))          # each utterance once
        assert len(batches) >= gb.num_batches(split)
    # shuffled (train) batches are not repacked
    assert ([b.nodes.mask.shape for b in packed.batches("train", shuffle=True, seed=0)]
            == [b.nodes.mask.shape for b in gb.batches("train", shuffle=True, seed=0)])


def test_packed_rows_hold_whole_dialogues_side_by_side():
    rng = np.random.default_rng(0)
    for _ in range(200):
        row_len = int(rng.integers(5, 40))
        lengths = rng.integers(1, row_len + 1, size=int(rng.integers(0, 30)))
        row, offset = pack_rows(lengths, row_len)
        slots = set()
        for r, o, n in zip(row, offset, lengths):
            assert 0 <= o and o + n <= row_len
            cells = {(int(r), int(c)) for c in range(o, o + n)}
            assert not cells & slots                    # no two dialogues share a slot
            slots |= cells
        rows = int(row.max(initial=-1)) + 1
        assert set(row.tolist()) == set(range(rows))    # rows numbered without gaps
        assert rows <= 2 * lengths.sum() / row_len + 1  # first fit: at most one row half empty
    with pytest.raises(ConfigError, match="exceeds rows of 4"):
        pack_rows([3, 5], 4)
    # a packed view keeps a padding slot: full rows take one more
    assert rows_needed([4, 4], 4) == 3 and rows_needed([4, 3], 4) == 2 and rows_needed([], 4) == 1


def test_a_packed_batch_keeps_its_dialogues_apart(iemocap_small):
    gb = GraphBatcher(iemocap_small, window=3, batch_size=6)
    dialogues = iemocap_small.split("train")[:6]
    plain = gb.build(dialogues)
    rows = gb.rows_of(dialogues)
    budget = gb.budget_of(dialogues)
    assert rows < budget.n_graph
    packed_budget = dataclasses.replace(budget, n_row=rows)
    packed = gb.build(dialogues, packed_budget)
    dense, nodes = packed.layout.dense_index, packed.nodes
    assert packed.layout.packed and not plain.layout.packed
    assert dense.shape == (rows, budget.max_len) and packed.n_graph == plain.n_graph
    real = dense[nodes.mask[dense]]
    assert not nodes.mask[dense].all()                                   # a padding slot
    assert sorted(real.tolist()) == list(range(int(nodes.mask.sum())))   # every node once
    for r in range(rows):          # a row holds whole dialogues, each contiguous, in order
        for g in set(nodes.graph[dense[r]][nodes.mask[dense[r]]].tolist()):
            cols = np.flatnonzero((nodes.graph[dense[r]] == g) & nodes.mask[dense[r]])
            assert len(cols) == len(dialogues[g]) and np.all(np.diff(cols) == 1)
            np.testing.assert_array_equal(nodes.label[dense[r, cols]], dialogues[g].labels)
    # everything but the dense view is the unpacked batch's
    for a, b in zip(jax.tree.leaves(packed.replace(layout=None)),
                    jax.tree.leaves(plain.replace(layout=None))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match=f"need {rows} rows"):
        gb.build(dialogues, dataclasses.replace(budget, n_row=rows - 1))
    # a batcher planned for other batches falls back to an unpacked budget for this one
    few = gb.with_budgets([dataclasses.replace(b, n_row=1) for b in gb.budgets])
    assert few.budget_of(dialogues) == budget
