"""Bridge to the authors' PyTorch release: its state_dict -> ambjax parameters, its dense batch
layout -> `DialogueBatch`, and its outputs back.

The release stores `nn.Linear` weights as [out, in] (ambjax `Dense` kernels are [in, out]), the
differential layers' `W` as [in, out], score vectors as [1, k], and one module per modality:
its relational blocks (gatTer, gatAer, gatVer, ...) become the rows of ambjax's stacked blocks
("inter", "intra": leaves [M, ...] in the config's modality order), its audio and visual
encoders and gates those of "encoder" and "gate" ([M', ...] over the non-text modalities;
`ambjax.nn.stack`). Its unused entries (the sinusoid
buffers `*.pos_emb.pe`, recomputed here, and the transformer layer's own LayerNorm, which the
release applies only from a second layer on) are ignored.

    params = release_to_params(state_dict)                 # then AMBDSGDN.apply({"params": ...})
    outputs = release_forward(state_dict, inputs)          # the fixture's output names/shapes
    q = release_q(perf, q_base, lam)                       # the release's calcu_q, exactly
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ambjax.errors import CheckpointError
from ambjax.data.dataset import Dialogue
from ambjax.graphs.batching import Budget, DialogueBatch, build_batch
from ambjax.graphs.edges import GRAPH_KINDS, edges_from_relation_matrix
from ambjax.nn.balance import drop_probabilities
from ambjax.nn.model import AMBDSGDN, ModelConfig

_MODALITY = {"t": "text", "a": "audio", "v": "visual"}
_INPUT = {"textf_input": "text", "acouf_input": "audio", "visuf_input": "visual"}
_BLOCK = {"gatTer": ("inter", "text"), "gatT": ("intra", "text"), "gatAer": ("inter", "audio"),
          "gatA": ("intra", "audio"), "gatVer": ("inter", "visual"), "gatV": ("intra", "visual")}
_ENCODER = {"a_a": "audio", "v_v": "visual"}
_ATTN = {"linear_q": "query", "linear_k": "key", "linear_v": "value", "linear": "out"}
_FFN = {"w_1": "ffn_in", "w_2": "ffn_out"}
_IGNORED = re.compile(r"^(a_a|v_v)\.(pos_emb\.pe|transformer_inter\.0\.layer_norm\.(weight|bias))$")


def _dense(path: tuple, leaf: str, value: np.ndarray) -> dict:
    if leaf == "weight":
        return {path + ("kernel",): value.T}
    return {path + ("bias",): value}


def _norm(path: tuple, leaf: str, value: np.ndarray) -> dict:
    return {path + ("scale" if leaf == "weight" else "bias",): value}


def _map_entry(name: str, value: np.ndarray) -> dict:
    """One release state_dict entry -> {ambjax param path: array}; a path into a stacked module
    starts with (module name, modality), the member's row."""
    parts = name.split(".")
    head, leaf = parts[0], parts[-1]
    if name == "speaker_embeddings.weight":
        return {("speaker_embedding", "embedding"): value}
    if head in _INPUT and len(parts) == 2:
        return _dense((f"input_{_INPUT[head]}",), leaf, value)
    if head in ("agate", "vgate") and parts[1:3] == ["gate", "0"]:
        return _dense(("gate", _MODALITY[head[0]], "dense"), leaf, value)
    m = re.fullmatch(r"([tav])_output_layer\.2\.(weight|bias)", name)
    if m:
        return _dense((f"head_{_MODALITY[m.group(1)]}",), leaf, value)
    if head in _ENCODER and parts[1:3] == ["transformer_inter", "0"]:
        enc = ("encoder", _ENCODER[head])
        if parts[3] == "self_attn" and parts[4] in _ATTN:
            return _dense(enc + ("self_attn", _ATTN[parts[4]]), leaf, value)
        if parts[3] == "feed_forward" and parts[4] in _FFN:
            return _dense(enc + (_FFN[parts[4]],), leaf, value)
        if parts[3:5] == ["feed_forward", "layer_norm"]:
            return _norm(enc + ("ffn_norm",), leaf, value)
    if head in _BLOCK:
        block = _BLOCK[head]
        if parts[1] == "fc":
            return _dense(block + ("fc",), leaf, value)
        if parts[1] == "layer_norm":
            return _norm(block + ("norm",), leaf, value)
        layer = block + (parts[1],)
        if parts[2] == "layer_norm":
            return _norm(layer + ("norm",), leaf, value)
        if len(parts) == 3:  # W, lambda_*
            return {layer + (parts[2],): value}
        if leaf == "weight":  # a_*.weight [1, k], relation_embedding.weight [6, 10]
            return {layer + (parts[2],): value[0] if parts[2].startswith("a_") else value}
    raise CheckpointError(f"unknown release parameter {name!r}")


def _stack_members(flat: dict, config: ModelConfig) -> dict:
    """Per-modality entries (module, modality, *rest) -> stacked (module, *rest) [M, ...] in
    the config's order of the modalities the module runs over; a member missing from the
    release leaves the stacked leaf missing (reported by the caller)."""
    members = {"inter": config.modalities, "intra": config.modalities,
               "encoder": config.context_modalities, "gate": config.context_modalities}
    out, rows = {}, {}
    for path, value in flat.items():
        if path[0] in members:
            rows.setdefault((path[0],) + path[2:], {})[path[1]] = value
        else:
            out[path] = value
    for path, by_modality in rows.items():
        order = members[path[0]]
        if sorted(by_modality) == sorted(order):
            out[path] = np.stack([by_modality[m] for m in order])
    return out


def release_config(state_dict: Mapping[str, np.ndarray], *, num_heads: int = 8,
                   **overrides) -> ModelConfig:
    """The `ModelConfig` a release state_dict was built with (widths read from the weights;
    the transformer head count is not stored in the weights: release runs use 8)."""
    dims = tuple((m, int(state_dict[f"{k}.weight"].shape[1])) for k, m in _INPUT.items()
                 if f"{k}.weight" in state_dict)
    head = state_dict["t_output_layer.2.weight"]
    return ModelConfig(input_dims=dims, num_classes=int(head.shape[0]),
                       num_speakers=int(state_dict["speaker_embeddings.weight"].shape[0]) - 1,
                       hidden_dim=int(head.shape[1]), num_heads=num_heads, **overrides)


def release_to_params(state_dict: Mapping[str, np.ndarray], config: ModelConfig | None = None,
                      example_batch: DialogueBatch | None = None) -> dict:
    """Map a release state_dict (name -> array, the release's layouts) to ambjax `params`.

    Every ambjax parameter must be filled with an array of its shape and every release entry
    must be used (or be one of the known unused ones); otherwise a `ValueError` lists them.
    """
    config = config or release_config(state_dict)
    flat: dict = {}
    for name, value in state_dict.items():
        if _IGNORED.match(name):
            continue
        flat.update(_map_entry(name, np.asarray(value, np.float32)))
    flat = _stack_members(flat, config)
    if example_batch is None:
        example_batch = _dummy_batch(config)
    shapes = jax.eval_shape(lambda: AMBDSGDN(config).init(jax.random.key(0), example_batch))
    expected = {path: leaf.shape for path, leaf in flatten_dict(shapes["params"]).items()}
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    wrong = sorted(k for k in set(expected) & set(flat) if flat[k].shape != expected[k])
    if missing or extra or wrong:
        raise CheckpointError(f"release state_dict does not fit the ambjax model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shapes "
                         f"{[(k, flat[k].shape, expected[k]) for k in wrong[:5]]}")
    return unflatten_dict(flat)


def _dummy_batch(config: ModelConfig) -> DialogueBatch:
    dialogue = Dialogue(id=0, speakers=np.zeros(1, np.int32), labels=np.zeros(1, np.int32),
                        features={m: np.zeros((1, d), np.float32) for m, d in config.input_dims})
    edges = {k: [edges_from_relation_matrix(np.ones((1, 1), np.int32))] for k in GRAPH_KINDS}
    return build_batch([dialogue], Budget(2, 1, 1, 2, 1), modalities=config.modalities,
                       num_speakers=config.num_speakers, edges=edges)


def dense_inputs_to_batch(inputs: Mapping[str, np.ndarray], config: ModelConfig) -> DialogueBatch:
    """The release's dense batch (time-major features, qmask, umask, relation matrices; names as
    in the fixtures: input/text ...) as a `DialogueBatch` using exactly the given relation
    matrices. Keys may be given with or without the "input/" prefix."""
    get = lambda k: np.asarray(inputs[k] if k in inputs else inputs[f"input/{k}"])  # noqa: E731
    umask = get("umask")
    b, n = umask.shape
    lengths = umask.sum(1).astype(int)
    speakers = np.argmax(get("qmask"), -1).T  # [B, N]
    labels = get("label") if ("label" in inputs or "input/label" in inputs) else np.zeros((b, n))
    feats = {m: get(m).transpose(1, 0, 2) for m in config.modalities}
    dialogues, edges = [], {k: [] for k in GRAPH_KINDS}
    for i, length in enumerate(lengths):
        dialogues.append(Dialogue(id=i, speakers=speakers[i, :length], labels=labels[i, :length],
                                  features={m: x[i, :length] for m, x in feats.items()}))
        for kind in GRAPH_KINDS:
            edges[kind].append(edges_from_relation_matrix(get(f"{kind}_adj")[i, :length, :length]))
    budget = Budget(n_node=int(lengths.sum()) + 1,
                    n_edge_intra=sum(len(e.types) for e in edges["intra"]),
                    n_edge_inter=sum(len(e.types) for e in edges["inter"]),
                    n_graph=b + 1, max_len=n)
    return build_batch(dialogues, budget, modalities=config.modalities,
                       num_speakers=config.num_speakers, edges=edges)


def release_forward(state_dict: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray], *,
                    num_heads: int = 8) -> dict[str, np.ndarray]:
    """Evaluate a release checkpoint with ambjax on a batch in the release's dense layout.

    Args:
      state_dict: release parameter name -> array (numpy), as in `param/*` of the fixtures.
      inputs: "input/text" (N, B, Dt), "input/audio", "input/visual", "input/qmask" (N, B, S),
        "input/umask" (B, N), "input/intra_adj" and "input/inter_adj" (B, N, N); the prefix is
        optional.
      num_heads: transformer heads of the release model (its run scripts use 8).

    Returns:
      The release's eval-mode outputs under the fixture names, batch-major: "output/fused",
      "output/text", "output/audio", "output/visual" (log-softmax, (B, N, C)),
      "output/fused_prob", "output/fused_logits", "output/{text,audio,visual}_logits" and
      "output/update_flag" (B,) int32. Rows of padding utterances are 0.
    """
    config = release_config(state_dict, num_heads=num_heads)
    batch = dense_inputs_to_batch(inputs, config)
    params = release_to_params(state_dict, config, batch)
    out = jax.jit(lambda p, x: AMBDSGDN(config).apply({"params": p}, x))(params, batch)
    umask = np.asarray(inputs["input/umask"] if "input/umask" in inputs else inputs["umask"])
    b, n = umask.shape
    real = umask.astype(bool)
    total = int(real.sum())

    def dense(flat):
        arr = np.zeros((b, n, flat.shape[-1]), np.float32)
        arr[real] = np.asarray(flat)[:total]  # nodes are packed dialogue by dialogue, in order
        return arr

    fused = np.asarray(out["logits"])
    result = {"output/fused_logits": dense(fused),
              "output/fused": dense(jax.nn.log_softmax(fused)),
              "output/fused_prob": dense(jax.nn.softmax(fused)),
              "output/update_flag": np.ones(b, np.int32)}
    for m, logits in out["modality_logits"].items():
        result[f"output/{m}_logits"] = dense(logits)
        result[f"output/{m}"] = dense(jax.nn.log_softmax(logits))
    return result


def release_q(perf, q_base: float, lam: float) -> np.ndarray:
    """The release's drop probabilities for performance rows: perf float [M] or [K, M] ->
    float32 of the same shape, computed in float32 numpy so that it equals the release bit for
    bit (see `ambjax.nn.balance.drop_probabilities`).

    Example:
      >>> q = release_q([[0.6, 0.6, 0.3], [0.5, 0.5, 0.5]], q_base=0.3, lam=0.9)
      >>> [[round(float(x), 5) for x in row] for row in q]
      [[0.39868, 0.39868, 0.0], [0.0, 0.0, 0.0]]
    """
    perf = np.asarray(perf, np.float32)
    rows = perf.reshape(-1, perf.shape[-1])
    out = np.stack([drop_probabilities(r, q_base, lam, xp=np) for r in rows])
    return out.reshape(perf.shape)
