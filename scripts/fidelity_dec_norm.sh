#!/usr/bin/env bash
# The fidelity guard for train.agg_dec_norm_every (docs/DESIGN.md, "Speed"): Algorithm 1 exactly (1) against
# the option (15: the decoder's weights get a gradient once per inner-loop window), same seeds.
# Usage: bash scripts/fidelity_dec_norm.sh [synthetic|ptb ...]   (default: both; compare resumes finished cells)
# Budget on the 2-core CPU: synthetic ~2 x 3 runs of 50 epochs; ptb one --size cpu run per setting.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/bin/.installed
L=.venv/bin/lagvae
for step in ${@:-synthetic ptb}; do
  for every in 1 15; do
    case "$step" in
      synthetic)
        time $L compare synthetic --methods aggressive --seeds 3 --epochs 50 --jobs 2 \
          --out "runs/fidelity/synthetic-every$every" --set train.max_decays=0 \
          --set train.agg_dec_norm_every=$every --set eval.posterior_points=0 ;;
      ptb)  # the reduced PTB setting of docs/RESULTS.md (scripts/reproduce_real.sh)
        time $L compare ptb --size cpu --methods aggressive-anneal --epochs 10 --train-limit 5000 --jobs 1 \
          --out "runs/fidelity/ptb-every$every" --set data.max_vocab=5000 --set data.eval_limit=1000 --set data.vocab_from=all \
          --set train.agg_dec_norm_every=$every ;;
      *) echo "unknown step $step" >&2; exit 2 ;;
    esac
  done
done
