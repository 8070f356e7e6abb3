"""The data section of a run's config tree (`ambjax.train.config.ExperimentConfig.data`):
where the dialogues come from and how they are batched. Checked with the rest of the tree by
`ambjax.train.config.validate`; read by `ambjax.data.assemble.load_dataset`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the dialogues come from and how they are batched.

    Attributes:
      path: a feature pickle (any layout `ambjax.data.load_features` reads); None: the bundled
        synthetic data.
      synthetic: shape of the synthetic data, "iemocap" or "meld" (when `path` is None).
      synthetic_scale: share of the real dataset's dialogues to generate.
      synthetic_dims: ((modality, width), ...) of the synthetic features; () = the real widths.
      synthetic_seed: seed of the synthetic data.
      text: "first" (the release's RoBERTa layer) or "mean4" (the mean of four; SDT layouts).
      valid_fraction: share of train held out for validation when the data has no dev split
        (IEMOCAP layouts and IEMOCAP-shaped synthetic data).
      modalities: modalities to use, in order; () = all in the data.
      window: edge window of the dialogue graphs (release: IEMOCAP 20, MELD 6).
      batch_size: dialogues per (global) batch.
      budget_growth: ratio between the padding buckets of the ladder (> 1); None = one bucket
        (one compile). A fine ladder gives `compile_node_steps`'s choice more buckets to keep
        or merge (at 1.25 MELD's 640-node batches were padded to 768: `python -m
        benchmarks.step_time --preset meld --variant data.budget_growth=1.1`).
      compile_node_steps: what one compiled program costs, in padded node-steps (padded
        nodes x steps): a run keeps the padding buckets that minimise this times its
        programs plus the padded node-steps of its epochs, and pads the batches of the others
        into a larger kept one (`ambjax.graphs.merge_budgets`; padding changes only the
        time). The default is a 2-core CPU's at hidden 512 (a program's compile ~ 6 s of
        wall time, a padded node ~ 0.45-0.5 ms of a train step since the packed view and
        huge pages; 8192 before, at ~ 0.65 ms; `python -m benchmarks.step_time`);
        smaller models and accelerators, whose steps are cheaper, gain from a larger value; 0
        keeps every bucket.
        The kept buckets depend on the run's epochs and seeds: a run resumed with more
        epochs may pad some batches differently (the same values up to float rounding).
      pack_rows: pack several whole dialogues into each row of the batches' dense
        per-dialogue view, where the context encoder attends (`Budget.n_row`,
        `GraphBatcher.with_packed_rows`): the same results up to float rounding (the dropout
        masks are drawn as without packing) in fewer rows; False: one row per dialogue slot
        (the layout of ambjax before 2026-12-05's fourth session, bit for bit).
      standardize: standardise every feature dimension with train-split statistics
        (`ambjax.data.Standardizer`; saved in the run folder and reused by evaluation).
      drop_constant: leave out modalities that are constant (e.g. all zero) over the train
        split; they are reported either way.
    """

    path: str | None = None
    synthetic: str = "iemocap"
    synthetic_scale: float = 1.0
    synthetic_dims: tuple[tuple[str, int], ...] = ()
    synthetic_seed: int = 0
    text: str = "first"
    valid_fraction: float = 0.1
    modalities: tuple[str, ...] = ()
    window: int = 20
    batch_size: int = 16
    budget_growth: float | None = 1.1
    compile_node_steps: float = 12000.0
    pack_rows: bool = True
    standardize: bool = False
    drop_constant: bool = False
