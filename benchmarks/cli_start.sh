#!/usr/bin/env bash
# Seconds from process start to the "compiled" line and to the first epoch line of
#   python -m experiments.train --preset PRESET --epochs 1
# with the compilation cache in CACHE_DIR: run it twice on a new folder, the first run is the
# cold start, the second the warm one. Usage: bash benchmarks/cli_start.sh CACHE_DIR [PRESET]
set -euo pipefail
export AMBJAX_CACHE_DIR=$1
out=$(mktemp -d)
grep -m1 "model name" /proc/cpuinfo
start=$(date +%s.%N)
python -m experiments.train --preset "${2:-iemocap}" --epochs 1 --out "$out/run" 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      compiled*|epoch*) printf '%.1f s  %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" \
                          "$(echo "$line" | cut -c1-70)";;
    esac
  done
rm -rf "$out"
