#!/usr/bin/env bash
# One prepared accelerator run (#18): on a bare GPU machine with jax (CUDA), flax, optax,
# orbax-checkpoint, chex and torch, plus the wheels it is given, in under 8 minutes:
#   1. benchmarks.versus_release --device gpu for IEMOCAP and MELD (the release on the same GPU);
#   2. benchmarks.throughput on the IEMOCAP preset: float32 with 1, 8 and 32 seeds vmapped and
#      bfloat16 with 1 seed, each row a cold compile (new cache) and a warm start;
# and writes one JSON and one table: $OUT/accelerator.json and $OUT/accelerator.md (OUT
# defaults to benchmarks/results/accelerator-<date>).
#
# Prepare here (once), in the repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.release/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       jraph==0.0.6.dev0 scikit-learn pandas threadpoolctl joblib tzdata   # what is missing there
#   git --git-dir=<fetched AMB-DSGDN>/repo archive HEAD | tar -x -C .release  (mkdir first)
# Run there (carry .whl and .release):  bash benchmarks/accelerator.sh
# Settings by environment: EPOCHS (3), PRESETS ("iemocap meld"), SEEDS ("1 8 32"), DEVICE (gpu),
# RELEASE (.release), RELEASE_PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/accelerator-$(date +%F)}"
mkdir -p "$OUT" /tmp/site
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
EPOCHS="${EPOCHS:-3}"; PRESETS="${PRESETS:-iemocap meld}"; SEEDS="${SEEDS:-1 8 32}"
DEVICE="${DEVICE:-gpu}"; RELEASE="${RELEASE:-.release}"; RELEASE_PYTHON="${RELEASE_PYTHON:-python3}"
python3 -c "import jax, jraph; print('jax', jax.__version__, jax.devices())"
start=$(date +%s)
python3 -m benchmarks.versus_release --release "$RELEASE" --release-python "$RELEASE_PYTHON" \
    --device "$DEVICE" --presets $PRESETS --epochs "$EPOCHS" --first-epochs 1 \
    --wait-idle 0 --name accelerator-versus_release 2>&1 | tee "$OUT/versus_release.log"
python3 -m benchmarks.throughput --preset iemocap --seeds $SEEDS --dtype float32 \
    --name accelerator-throughput-f32 2>&1 | tee "$OUT/throughput-f32.log"
python3 -m benchmarks.throughput --preset iemocap --seeds 1 --dtype bfloat16 \
    --name accelerator-throughput-bf16 2>&1 | tee "$OUT/throughput-bf16.log"
python3 - "$OUT" "$start" <<'EOF'
import glob, json, os, sys, time
out, start = sys.argv[1], float(sys.argv[2])
parts = {}
for stem in ("accelerator-versus_release", "accelerator-throughput-f32",
             "accelerator-throughput-bf16"):
    path = max(glob.glob(f"benchmarks/results/{stem}-*.json"), key=os.path.getmtime)
    with open(path) as f:
        parts[stem] = json.load(f)
    with open(path[:-5] + ".md") as f:
        parts[stem]["table"] = f.read()
blob = {"seconds": time.time() - start, "parts": parts}
with open(os.path.join(out, "accelerator.json"), "w") as f:
    json.dump(blob, f, indent=1)
with open(os.path.join(out, "accelerator.md"), "w") as f:
    f.write(f"# Accelerator run ({blob['seconds']:.0f} s)\n\n"
            + "\n\n".join(p["table"] for p in parts.values()))
print(f"wrote {out}/accelerator.json and accelerator.md ({blob['seconds']:.0f} s)")
EOF
