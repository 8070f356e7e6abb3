"""Hand-written code against the library function it could be: which is faster here.

    python -m benchmarks.twins [--repeats 7]

Each pair computes the same thing; the table gives the median time of a jitted forward +
backward (segment softmax, over 200k edges into 20k receivers) or of one optimiser update on
AMB-DSGDN's parameter count at hidden 512 (7.7M float32: the release's Adam + L2 as ambjax
builds it with optax's pieces, and the same from a hand chain with `scale_by_schedule`), of a
dropout mask over [3, 896, 1024] (the counter-hash key of `ambjax.hash_prng` against JAX's
"rbg" and "threefry" keys), of a layer norm's forward + backward over [3, 896, 512] with a
scale per row of the first axis (as the modality-stacked norms have) for one member
(`ambjax.train.steps.map_members`, which squeezes a size-1 member axis, against `jax.vmap`),
or of the exact GELU's forward + backward (PyTorch's erf formula against `jax.nn.gelu`'s
erfc).
Results: benchmarks/results/twins-<device>-<date>.{json,md}. ambjax uses the library function
where it measures no slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit

import jax
import jax.numpy as jnp
import jraph
import optax

from ambjax.hash_prng import HASH_PRNG
from ambjax.nn.attention import exact_gelu
from ambjax.nn.kernels import segment_softmax
from ambjax.train.steps import map_members
from ambjax.train.config import OptimConfig
from ambjax.train.state import create_optimizer
from benchmarks.common import cpu_name, environment, write_results


def _time_pair(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, measured in alternating order (one round of
    10 calls each at a time), so that warm-up and drift do not favour either."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            times[name].append(timeit.timeit(fns[name], number=10) / 10)
    return {name: statistics.median(t) for name, t in times.items()}


def _softmax_pair(repeats: int) -> dict:
    edges, nodes = 200_000, 20_000
    key = jax.random.PRNGKey(0)
    scores = jax.random.normal(key, (edges,))
    receivers = jnp.sort(jax.random.randint(key, (edges,), 0, nodes))

    def grad_of(softmax):
        f = jax.jit(jax.grad(lambda s: (softmax(s, receivers, nodes) ** 2).sum()))
        return lambda: f(scores).block_until_ready()
    return _time_pair({"ambjax segment_softmax": grad_of(segment_softmax),
                       "jraph.segment_softmax": grad_of(jraph.segment_softmax)}, repeats)


def _adam_pair(repeats: int) -> dict:
    params = {"w": jnp.ones((7_700_000,), jnp.float32)}
    grads = {"w": jnp.full((7_700_000,), 1e-3, jnp.float32)}
    schedule = optax.constant_schedule(6.8e-5)
    hand = optax.chain(optax.add_decayed_weights(5e-5), optax.scale_by_adam(),
                       optax.scale_by_schedule(lambda step: -schedule(step)))
    fns = {}
    for name, opt in (("optax chain (ambjax)", create_optimizer(OptimConfig())),
                      ("hand chain with scale_by_schedule", hand)):
        state = opt.init(params)
        step = jax.jit(lambda p, s, opt=opt: opt.update(grads, s, p))
        fns[name] = lambda step=step, state=state: jax.block_until_ready(step(params, state))
    return _time_pair(fns, repeats)


def _mask_pair(repeats: int) -> dict:
    shape = (3, 896, 1024)
    data = jax.random.key_data(jax.random.PRNGKey(0))
    fns = {}
    for name, impl in (("ambjax hash_prng", HASH_PRNG), ("jax rbg", "rbg"),
                       ("jax threefry", "threefry2x32")):
        draw = jax.jit(lambda d, impl=impl: jax.random.bernoulli(
            jax.random.wrap_key_data(jnp.tile(d, 2) if impl == "rbg" else d, impl=impl),
            0.5, shape))
        fns[name] = lambda draw=draw: draw(data).block_until_ready()
    return _time_pair(fns, repeats)


def _member_pair(repeats: int) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 896, 512))
    scale = jnp.ones((1, 3, 512))             # one scale per modality, as the stacked norms

    def loss(scale, x):
        centred = x - x.mean(-1, keepdims=True)
        return jnp.sum(centred * jax.lax.rsqrt((centred ** 2).mean(-1, keepdims=True) + 1e-5)
                       * scale[:, None])
    grad = jax.grad(loss)
    fns = {}
    for name, wrap in (("ambjax map_members", map_members), ("jax.vmap", jax.vmap)):
        f = jax.jit(wrap(grad, in_axes=(0, 0)))
        fns[name] = lambda f=f: f(scale, x).block_until_ready()
    return _time_pair(fns, repeats)


def _gelu_pair(repeats: int) -> dict:
    x = 3 * jax.random.normal(jax.random.PRNGKey(0), (3, 896, 1024))
    fns = {}
    for name, gelu in (("ambjax exact_gelu (erf)", exact_gelu),
                       ("jax.nn.gelu(approximate=False) (erfc)",
                        lambda v: jax.nn.gelu(v, approximate=False))):
        f = jax.jit(jax.value_and_grad(lambda v, gelu=gelu: gelu(v).sum()))
        fns[name] = lambda f=f: jax.block_until_ready(f(x))
    return _time_pair(fns, repeats)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.twins")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--name", default="twins",
                   help="results/NAME-<device>-<date>.json and .md")
    args = p.parse_args(argv)
    env = environment()
    pairs = {"segment softmax (forward + backward)": _softmax_pair(args.repeats),
             "Adam + L2 update (7.7M parameters)": _adam_pair(args.repeats),
             "dropout mask, p = 0.5, [3, 896, 1024]": _mask_pair(args.repeats),
             "layer norm forward + backward, one member": _member_pair(args.repeats),
             "exact GELU forward + backward, [3, 896, 1024]": _gelu_pair(args.repeats)}
    lines = [f"# Library twins on {cpu_name(env)} ({env['device']}, jax {env['jax']}, "
             f"{env['date']})", "", "| computation | implementation | median ms |",
             "|---|---|---|"]
    for what, times in pairs.items():
        for name, t in times.items():
            lines.append(f"| {what} | {name} | {1e3 * t:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    print("wrote", write_results(args.name, {"benchmark": "twins", "environment": env,
                                             "seconds": pairs}, table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
