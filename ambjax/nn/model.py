"""The AMB-DSGDN model (DESIGN.md sections 3-7) over a padded `DialogueBatch`.

Per modality m (separate parameters, shared graph topology):

    X_t = Linear(x_t)                                            # text: no transformer
    X_m = ContextEncoder(Linear(x_m))                            # audio, visual
    Z_m = Block_intra(Block_inter(X_m))                          # inter first
    Z_m = sigmoid(W Z_m + b) * Z_m                               # audio, visual only
    l_m = Linear(Dropout(ReLU(Z_m)));  l = sum_m l_m

The modality streams have the same shapes after their input projections, so the encoders and
gates (audio, visual) and the relational blocks (all modalities) each run as one stacked
computation over a leading modality axis (`ambjax.nn.stack`): parameters "encoder", "gate",
"inter" and "intra" hold [M, ...] leaves in the config's modality order (without text for the
encoder and gate); member m computes what a separate module with row m's parameters computes.

In training with balancing active, P_m (weighted F1 of l_m over the global batch), q_m and
`ModalityDropout` act on Z_m and the logits are recomputed from the kept features.

Release behaviours kept as defaults (switches in `ModelConfig`): every differential layer uses
depth 1 for lambda_init (`depth_dependent_lambda`), full-width LayerNorm in each layer (`norm`),
the transformer only on audio/visual, the balancing's rectified weighted sum (see
`ambjax.nn.balance`). The release's unused parameters (the transformer layer's own LayerNorm,
which it applies only from the second layer on) are not created.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ambjax.errors import ConfigError
from ambjax.graphs.batch import DialogueBatch
from ambjax.nn.attention import LAMBDA_INIT_OFFICIAL, lambda_init_for_depth
from ambjax.nn.balance import ModalityBalancing
from ambjax.nn.block import DifferentialRelationalBlock
from ambjax.nn.encoder import ContextEncoder, SigmoidGate
from ambjax.nn.protocol import ModelOutput
from ambjax.nn.stack import GRAPH_AXES, stacked_call


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of `AMBDSGDN`; the `model` part of a run's config tree.

    The first three fields describe the data and are filled from it (`with_data`); in a run's
    config tree they stay empty (the data decides them), every other field is a setting.

    Attributes:
      input_dims: ((modality, width), ...) of the modalities used, e.g. (("text", 1024), ...).
      num_classes: C.
      num_speakers: speaker slots S (the embedding table has S + 1 rows; row S is padding).
      hidden_dim: d (release 512).
      num_heads: transformer heads (release 8).
      graph_heads: differential attention layers per block (release 2).
      dropout: encoder/head dropout p (release IEMOCAP 0.5, MELD 0.11).
      graph_dropout: dropout inside the relational blocks (release 0.2).
      differential: False = plain graph attention (ablation "no differential term").
      norm: "layernorm" (release) or "rmsnorm" (DIFF-Transformer per-head norm).
      depth_dependent_lambda: lambda_init from each layer's depth (1-based, counted through the
        inter then intra block) instead of the release's depth 1 everywhere.
      graphs: which relational blocks run, in order (ablations: ("inter",), ("intra",)).
      balance: enable adaptive modality balancing in training (ablation "no balancing").
      q_base, lam, p_exe: balancing constants (IEMOCAP 0.3 / 0.9 / 0.5, MELD 0.2 / 0.9 / 0.2).
      dtype: computation dtype of the encoders and relational blocks, "float32" (default,
        the release's) or "bfloat16" (mixed precision for GPU/TPU: parameters, attention
        softmax, norm statistics, heads, logits and loss stay float32).
      mask_rng: the generator of the dropout masks' random bits in training
        (`ambjax.train.steps.MASK_KEYS`): "hash" (default: the step's keys and every
        draw's bits from the counter hash of `ambjax.hash_prng`, which XLA fuses into the
        mask; the balancing draws too), "rbg" (XLA's RngBitGenerator) or "threefry" (JAX's
        default); on CPU the latter two spend a noticeable part of a step generating bits
        (`python -m benchmarks.twins`) and their keys are threefry's, a loop in the program
        per derived key. The masks' distribution is the same; the bits differ. With "rbg"
        and "threefry" the balancing draws use threefry.
    """

    input_dims: tuple[tuple[str, int], ...] = ()
    num_classes: int = 0
    num_speakers: int = 0
    hidden_dim: int = 512
    num_heads: int = 8
    graph_heads: int = 2
    dropout: float = 0.5
    graph_dropout: float = 0.2
    differential: bool = True
    norm: str = "layernorm"
    depth_dependent_lambda: bool = False
    graphs: tuple[str, ...] = ("inter", "intra")
    balance: bool = True
    q_base: float = 0.3
    lam: float = 0.9
    p_exe: float = 0.5
    dtype: str = "float32"
    mask_rng: str = "hash"

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.input_dims)

    @property
    def context_modalities(self) -> tuple[str, ...]:
        """The modalities with a context encoder and a gate: all but text, in order."""
        return tuple(m for m in self.modalities if m != "text")

    def with_data(self, dims: Mapping[str, int] | Sequence[tuple[str, int]], num_classes: int,
                  num_speakers: int) -> "ModelConfig":
        """This architecture for data of the given widths, classes and speaker slots."""
        items = tuple(dims.items()) if isinstance(dims, Mapping) else tuple(dims)
        return dataclasses.replace(self, input_dims=tuple((m, int(d)) for m, d in items),
                                   num_classes=int(num_classes), num_speakers=int(num_speakers))


class AMBDSGDN(nn.Module):
    """AMB-DSGDN over a padded `DialogueBatch`.

    Call:
      batch: `DialogueBatch` with N node slots, G graph slots.
      train: enables dropout (rng stream "dropout").
      balance_active: bool scalar (may be traced): run modality balancing (train only; rng
        stream "balance"). The trainer sets it after the warm-up epochs.
      axis_name: pmap axis over which confusion counts are summed (None: single device).

    Returns a dict:
      "logits": float32 [N, C] fused (summed) logits;
      "modality_logits": {m: float32 [N, C]} per-modality logits (after balancing);
      "modality_f1": float32 [M] P_m of the first-pass logits (train only, else zeros);
      "q": float32 [M] drop probabilities used (zeros unless balancing ran).
    Rows of padding nodes are finite and meaningless; mask with `batch.nodes.mask`.

    Example:
      >>> import jax
      >>> from ambjax.data import make_synthetic
      >>> from ambjax.graphs import GraphBatcher
      >>> data = make_synthetic("iemocap", scale=0.02, dims={"text": 8, "audio": 6, "visual": 4})
      >>> batch = GraphBatcher(data, window=4, batch_size=2).build(data.split("test")[:2])
      >>> model = create_model(data.dims, num_classes=6, num_speakers=2, hidden_dim=8,
      ...                      num_heads=2, graph_heads=1)
      >>> params = model.init(jax.random.PRNGKey(0), batch)["params"]
      >>> out = model.apply({"params": params}, batch)
      >>> out["logits"].shape == (batch.nodes.mask.shape[0], 6), sorted(out["modality_logits"])
      (True, ['audio', 'text', 'visual'])
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        if not c.input_dims or c.num_classes < 1 or c.num_speakers < 1:
            raise ConfigError("ModelConfig has no data shape (input_dims, num_classes, "
                             "num_speakers): build it with ModelConfig.with_data(...)")
        dtype = jnp.dtype(c.dtype)
        self.speaker_embedding = nn.Embed(c.num_speakers + 1, c.hidden_dim,
                                          name="speaker_embedding")
        self.inputs = {m: nn.Dense(c.hidden_dim, dtype=dtype, name=f"input_{m}")
                       for m in c.modalities}
        context = c.context_modalities
        if context:
            self.encoder = ContextEncoder(c.num_heads, c.dropout, dtype, name="encoder")
            self.gate = SigmoidGate(dtype, name="gate")
        blocks = {}
        for depth, kind in enumerate(c.graphs):
            if c.depth_dependent_lambda:
                first = depth * 2 + 1  # heads at depth `first`, output layer at first + 1
                inits = (lambda_init_for_depth(first), lambda_init_for_depth(first + 1))
            else:
                inits = (LAMBDA_INIT_OFFICIAL, LAMBDA_INIT_OFFICIAL)
            blocks[kind] = DifferentialRelationalBlock(
                c.hidden_dim, num_heads=c.graph_heads, dropout_rate=c.graph_dropout,
                lambda_init=inits[0], out_lambda_init=inits[1], differential=c.differential,
                norm=c.norm, dtype=dtype, name=kind)
        self.blocks = blocks
        self.heads = {m: nn.Dense(c.num_classes, name=f"head_{m}") for m in c.modalities}
        self.head_dropout = nn.Dropout(c.dropout)
        self.balancing = ModalityBalancing(c.q_base, c.lam, c.p_exe)

    def encode(self, batch: DialogueBatch, *, train: bool = False) -> dict[str, jax.Array]:
        """Final per-modality representations Z_m: {m: [N, d]} in the config's dtype."""
        c = self.config
        nodes = batch.nodes
        det = not train
        speaker = nodes.speaker
        # one-hot over the S real slots: the padding slot S gets a zero row; a matmul, whose
        # gradient is a matmul too (a gather's is a scatter, slow on XLA's CPU backend)
        spk = jax.nn.one_hot(speaker, c.num_speakers, dtype=jnp.float32) @ (
            self.speaker_embedding.embedding[:c.num_speakers])
        h = {}
        for m in c.modalities:
            x = nodes.features[m]
            chex.assert_shape(x, (nodes.mask.shape[0], dict(c.input_dims)[m]))
            h[m] = self.inputs[m](x)
        context = c.context_modalities
        if context:
            encoded = stacked_call(self.encoder, len(context), (0, None, None, None),
                                   jnp.stack([h[m] for m in context]), spk, nodes,
                                   batch.layout, deterministic=det)
            h.update(zip(context, encoded))
        z = jnp.stack([h[m] for m in c.modalities])                       # [M, N, d]
        for kind in c.graphs:
            z = stacked_call(self.blocks[kind], len(c.modalities), (GRAPH_AXES,),
                             batch.graph(kind, nodes=z), deterministic=det)
        out = dict(zip(c.modalities, z))
        if context:
            out.update(zip(context, stacked_call(self.gate, len(context), (0,),
                                                 jnp.stack([out[m] for m in context]))))
        return out

    def classify(self, features: dict[str, jax.Array], *, train: bool = False) -> dict:
        """Per-modality logits l_m = Linear(Dropout(ReLU(Z_m))): {m: float32 [N, C]}."""
        return {m: self.heads[m](self.head_dropout(jax.nn.relu(z.astype(jnp.float32)),
                                                   deterministic=not train))
                for m, z in features.items()}

    def __call__(self, batch: DialogueBatch, *, train: bool = False, balance_active=False,
                 axis_name: str | None = None) -> ModelOutput:
        c = self.config
        nodes = batch.nodes
        z = self.encode(batch, train=train)
        logits = self.classify(z, train=train)
        n_mod = len(c.modalities)
        f1 = jnp.zeros((n_mod,), jnp.float32)
        q = jnp.zeros((n_mod,), jnp.float32)
        if train and c.balance and n_mod > 1:
            logits, f1, q, _ = self.balancing(
                z, logits, lambda feats: self.classify(feats, train=True), nodes.label,
                nodes.mask, nodes.graph, batch.n_graph, active=balance_active,
                axis_name=axis_name)
        fused = sum(logits[m] for m in c.modalities)
        return {"logits": fused, "modality_logits": logits, "modality_f1": f1, "q": q}


def count_parameters(params) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def create_model(dims: Mapping[str, int] | Sequence[tuple[str, int]], num_classes: int,
                 num_speakers: int, **overrides) -> AMBDSGDN:
    """`AMBDSGDN` for the given input widths; `overrides` are `ModelConfig` fields."""
    return AMBDSGDN(ModelConfig(**overrides).with_data(dims, num_classes, num_speakers))
