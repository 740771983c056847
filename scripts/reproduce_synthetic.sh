#!/usr/bin/env bash
# The synthetic-data runs behind docs/RESULTS.md, in order; each prints its wall time.
# Usage: bash scripts/reproduce_synthetic.sh [demo|converge|baselines|bench ...]   (default: all four)
# Measured on the 2-core CPU machine: demo 5 min, converge 40 min, baselines 41 min, bench ~2 min.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/bin/.installed
L=.venv/bin/lagvae
BASELINES=aggressive,aggressive-anneal,savae,savae-anneal,vae,vae-anneal,beta=0.2,beta=0.4,beta=0.6,beta=0.8,cyclical,free-bits=0.5,lm
for job in "${@:-demo converge baselines bench}"; do
  for step in $job; do
    case "$step" in
      demo) time $L demo ;;
      converge)  # issue 2: the pair to convergence under the paper's LR rule, 2 seeds
        time $L compare synthetic --methods vae,aggressive --seeds 2 --epochs 50 --jobs 2 --out runs/converge ;;
      baselines)  # issue 4: every method, 3 seeds, the demo's budget (5 epochs on 6,000 sentences)
        time $L compare synthetic --methods "$BASELINES" --seeds 3 --epochs 5 --train-limit 6000 --jobs 2 \
          --out runs/baselines --set eval.iw_samples=100 --set eval.posterior_points=0 ;;
      bench) time .venv/bin/python benchmarks/bench_synthetic.py ;;
      *) echo "unknown step $step" >&2; exit 2 ;;
    esac
  done
done
