"""Where one training step's time goes: a kernel-level profile of the compiled step, grouped.

    python -m benchmarks.step_profile [--preset iemocap] [--hidden 512] [--steps 3]
                                      [--dtype float32] [--json PATH]

Times `--steps` train steps on the epoch's most frequent padding bucket, then traces each of
the step's two programs (its gradients, its optimiser update: `ambjax.train.steps.TrainStep`)
as many times with `jax.profiler` and sums the time of every XLA kernel (CPU: the thunks run on
XLA's thread pool, summed over its threads; GPU: device kernels). The kernels are grouped

- by kind: matmul (dots, including XNNPACK / cuBLAS fusions around a dot), random (threefry
  bits of the dropout masks), scatter/gather, and the rest (elementwise, reductions, copies);
- by pass: forward, backward (`transpose(jvp(...))`), and the loss/optimizer/step key code;
  kernels whose HLO carries no op name are "unattributed" (on CPU with jax 0.10.2: the
  XNNPACK matmul fusions, which drop the dots' metadata, most of the matmul time);
- by model component: the top-level module in the op's name (`inter`, `intra`, `encoder`,
  `gate`, `head_text`, ...; the relational blocks, encoders and gates of all modalities run
  as one stacked computation, `ambjax.nn.stack`).

Shares are comparable across devices; seconds are thread- or kernel-time, not wall time.
Results go to benchmarks/results/step_profile-<device>-<date>.json and .md.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ambjax.cli import ArgumentParser, run_main
from ambjax.train import Trainer, load_dataset, model_state
from benchmarks.common import cpu_name, environment, train_batches_by_shape, write_results
from experiments.configs import make_config

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
TOP_KERNELS = 15
_RANDOM = ("threefry", "random_bits", "_bernoulli", "_uniform", "random_split", "random_fold_in")


def parse_hlo(text: str) -> dict[str, dict]:
    """Instruction name -> {"op_name": str, "matmul": bool, "opcode_text": str} of an HLO
    module's text (a fusion counts as matmul when its fused computation contains a dot)."""
    bodies: dict[str, list[str]] = collections.defaultdict(list)
    instructions = {}
    current = None
    for line in text.splitlines():
        comp = _COMPUTATION.match(line)
        if comp and "=" not in line.split("{")[0]:
            current = comp.group(1)
            continue
        inst = _INSTRUCTION.match(line)
        if not inst:
            continue
        name, rest = inst.groups()
        if current is not None:
            bodies[current].append(rest)
        op = _OP_NAME.search(rest)
        calls = _CALLS.search(rest)
        instructions[name] = {"op_name": op.group(1) if op else "", "text": rest,
                              "calls": calls.group(1) if calls else None}
    dot = re.compile(r"\b(dot|convolution)\(|custom_call_target=\"(__cublas|__onednn)")
    for info in instructions.values():
        called = " ".join(bodies.get(info["calls"], [])) if info["calls"] else ""
        info["matmul"] = bool(dot.search(info["text"]) or dot.search(called))
    return instructions


def classify(name: str, info: dict | None) -> tuple[str, str, str]:
    """(kind, pass, component) of one kernel."""
    op = info["op_name"] if info else ""
    base = re.sub(r"\.\d+$", "", name)
    if any(r in op for r in _RANDOM):
        kind = "random"
    elif (info and info["matmul"]) or base.startswith(("ynn", "dot", "gemm", "cublas")):
        kind = "matmul"
    elif "scatter" in base or "gather" in base or "scatter" in op or "gather" in op:
        kind = "scatter/gather"
    else:
        kind = "other"
    step_pass = ("unattributed" if not op else "backward" if "transpose(jvp(" in op
                 else "forward" if "jvp(" in op else "loss/optimizer/keys")
    module = re.search(r"AMBDSGDN(?:\.\w+)?/(?:vmap\([^)]*\)/)?([A-Za-z_]+\d*)", op)
    component = module.group(1) if module else step_pass
    return kind, step_pass, component


def kernel_times(trace_dir: str, instructions: dict) -> dict[str, float]:
    """Summed seconds per kernel name of the step in a `jax.profiler` trace."""
    path = max((os.path.join(d, f) for d, _, fs in os.walk(trace_dir) for f in fs
                if f.endswith(".xplane.pb")), key=os.path.getmtime)
    totals: dict[str, float] = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in instructions:
                    totals[event.name] += event.duration_ns * 1e-9
    return totals


def profile_step(preset: str, *, hidden: int, steps: int, dtype: str) -> dict:
    config = make_config(preset, {"model.hidden_dim": str(hidden), "model.dtype": dtype})
    trainer = Trainer.from_config(config, load_dataset(config.data))
    # the most frequent shape of epoch 1 ([1, ...]: one seed)
    batch = max(train_batches_by_shape(trainer, 1).values(), key=len)[0]
    state, active = trainer.state, jnp.asarray(True)
    train = trainer.train_step            # two programs: the gradients, then the update
    state, metrics = train(state, batch, active)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = train(state, batch, active)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / steps
    grads, _ = train.gradients(model_state(state), batch, active)

    def update():                       # the update may donate the state (accelerators)
        nonlocal state
        state = train.update(state, grads)
        return state

    parts = {"gradients": (train.gradients.lower(model_state(state), batch, active),
                           lambda: train.gradients(model_state(state), batch, active)),
             "update": (train.update.lower(state, grads), update)}
    totals, instructions = collections.Counter(), {}
    for part, (lowered, run) in parts.items():   # each part alone: kernel names may repeat
        own = parse_hlo(lowered.compile().as_text())
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir)
            for _ in range(steps):
                jax.block_until_ready(run())
            jax.profiler.stop_trace()
            for name, seconds in kernel_times(trace_dir, own).items():
                totals[(part, name)] += seconds
        instructions.update({(part, name): info for name, info in own.items()})
    groups = {"kind": collections.Counter(), "pass": collections.Counter(),
              "component": collections.Counter()}
    for (part, name), seconds in totals.items():
        kind, step_pass, component = classify(name, instructions.get((part, name)))
        groups["kind"][kind] += seconds / steps
        groups["pass"][step_pass] += seconds / steps
        groups["component"][component] += seconds / steps
    kernel_s = float(sum(groups["kind"].values()))
    top = [{"kernel": name if part == "gradients" else f"{part}:{name}",
            "s_per_step": seconds / steps,
            "kind": classify(name, instructions.get((part, name)))[0],
            "hlo": instructions.get((part, name), {}).get("text", "")[:110]}
           for (part, name), seconds in totals.most_common(TOP_KERNELS)]
    return {"device": environment()["device"], "preset": preset, "hidden": hidden, "dtype": dtype,
            "nodes": int(batch.nodes.mask.shape[-1]),
            "real_nodes": int(np.asarray(batch.nodes.mask).sum()),
            "step_wall_s": wall, "kernel_s_per_step": kernel_s,
            "groups": {g: dict(c.most_common()) for g, c in groups.items()}, "top": top}


def main(argv=None) -> dict:
    p = ArgumentParser(prog="python -m benchmarks.step_profile")
    p.add_argument("--preset", nargs="+", default=["iemocap"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", help="also write the result object here")
    p.add_argument("--name", default="step_profile",
                   help="results/NAME-<device>-<date>.json and .md")
    args = p.parse_args(argv)
    env = environment()
    rows = [profile_step(preset, hidden=args.hidden, steps=args.steps, dtype=args.dtype)
            for preset in args.preset]
    lines = [f"Device: {env['device']} ({cpu_name(env)}), {env['cpu_count']} CPUs, "
             f"jax {env['jax']}; kernel time per train step (summed over threads on CPU), "
             "share of the total", ""]
    for r in rows:
        lines += [f"{r['preset']} (hidden {r['hidden']}, {r['dtype']}, {r['real_nodes']}/"
                  f"{r['nodes']} real nodes): step wall {r['step_wall_s']:.3f} s, kernels "
                  f"{r['kernel_s_per_step']:.3f} s", "", "| group | part | s/step | share |",
                  "|---|---|---|---|"]
        for group, parts in r["groups"].items():
            for part, seconds in parts.items():
                lines.append(f"| {group} | {part} | {seconds:.3f} | "
                             f"{100 * seconds / r['kernel_s_per_step']:.1f}% |")
        lines += ["", f"Largest {TOP_KERNELS} kernels (HLO text cut to 110 characters):", "",
                  "| kernel | kind | s/step | HLO |", "|---|---|---|---|"]
        lines += [f"| {k['kernel']} | {k['kind']} | {k['s_per_step']:.4f} | "
                  f"`{k['hlo'].replace('|', '/')}` |" for k in r["top"]]
        lines.append("")
    table = "\n".join(lines)
    print(table)
    result = {"benchmark": "step_profile", "environment": env, "results": rows}
    print("wrote", write_results(args.name, result, table, args.json))
    return result


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: (main(argv), 0)[1]))
