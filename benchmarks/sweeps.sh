#!/usr/bin/env bash
# The full sweeps behind README's results: both models, 3 seeds, every method; resumable (rerun to
# continue after an interruption). Writes benchmarks/results/sweep_<model>.json and PNG plots, then
# regenerates README's results section from the JSON. Several hours on 2 CPU cores; `fisherpack
# sweep --quick` is the few-minute version. To split a model's sweep by seed across processes or
# machines: `fisherpack sweep --model M --seeds N --out partN` for each N, then
# `fisherpack sweep --model M --merge part*/sweep_M.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
fisherpack sweep --model lenet5 &
lenet5=$!
fisherpack sweep --model lenet300
wait "$lenet5"  # fails the script if the LeNet-5 sweep failed
python benchmarks/readme_results.py
