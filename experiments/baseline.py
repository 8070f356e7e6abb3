"""A context-free baseline: multinomial logistic regression on each utterance's own features.

    python -m experiments.baseline --data meld_minilm.pkl
    python -m experiments.baseline --preset probe_common_mode      # a preset's synthetic data

Same data handling as `--recipe robust` (constant modalities left out, features standardised
with train statistics, modalities concatenated); no dialogue, speaker or graph. Full-batch Adam
with a small L2 penalty; the step count is chosen on validation weighted F1 (checked every 10
steps). Prints validation and test accuracy / weighted F1 as JSON. What the dialogue graph adds
is the difference between this and `experiments.train --recipe robust` on the same file.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ambjax.cli import ArgumentParser, run_main
from ambjax.metrics import classification_report, confusion_matrix
from ambjax.train import load_dataset, standardized

from experiments.configs import make_config


def split_arrays(dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, sum of widths], labels [n]) of every utterance of a split."""
    dialogues = dataset.split(split)
    x = np.concatenate([np.concatenate([d.features[m] for m in dataset.modalities], axis=1)
                        for d in dialogues])
    y = np.concatenate([d.labels for d in dialogues])
    return x.astype(np.float32), y.astype(np.int32)


def fit_logistic(train, valid, num_classes: int, *, steps: int = 400, lr: float = 1e-2,
                 l2: float = 1e-4) -> tuple[dict, int]:
    """Parameters at the validation-best step (checked every 10 steps), and that step."""
    (x, y), (xv, yv) = train, valid
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    opt = optax.adam(lr)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return nll + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        updates, s = opt.update(g, s)
        return optax.apply_updates(p, updates), s

    def valid_f1(p):
        pred = np.asarray(jnp.argmax(xv @ p["w"] + p["b"], -1))
        conf = confusion_matrix(jnp.asarray(yv), jnp.asarray(pred), jnp.ones(len(yv), bool),
                                num_classes)
        return classification_report(np.asarray(conf), [""] * num_classes)["weighted_f1"]

    state, best = opt.init(params), (-1.0, params, 0)
    for i in range(1, steps + 1):
        params, state = step(params, state)
        if i % 10 == 0:
            score = valid_f1(params)
            if score > best[0]:
                best = (score, params, i)
    return best[1], best[2]


def evaluate(params, x, y, label_names) -> dict:
    pred = np.asarray(jnp.argmax(x @ params["w"] + params["b"], -1))
    conf = confusion_matrix(jnp.asarray(y), jnp.asarray(pred), jnp.ones(len(y), bool),
                            len(label_names))
    r = classification_report(np.asarray(conf), label_names)
    return {k: r[k] for k in ("accuracy", "weighted_f1", "macro_f1")}


def baseline(argv: list[str]) -> int:
    p = ArgumentParser(prog="python -m experiments.baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="feature pickle (default: the preset's synthetic data)")
    p.add_argument("--preset", default="meld",
                   help="whose data settings (and, without --data, synthetic data) to use")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    config = make_config(args.preset, [f"data.path={args.data}"] if args.data else [],
                         recipe="robust")
    dataset, _ = standardized(load_dataset(config.data), config.data)
    train, valid, test = (split_arrays(dataset, s) for s in ("train", "valid", "test"))
    params, step = fit_logistic(train, valid, dataset.num_classes)
    result = {"modalities": list(dataset.modalities), "selected_step": step,
              "valid": evaluate(params, *valid, dataset.label_names),
              "test": evaluate(params, *test, dataset.label_names)}
    print(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(baseline, argv)


if __name__ == "__main__":
    sys.exit(main())
