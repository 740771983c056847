#!/usr/bin/env bash
# Issue 12: which validation I_q should end aggressive mode? The paper's per-minibatch `mi` against the
# whole-split `mi_full` (train.aggressive.switch_on), on the synthetic data (3 seeds) and PTB --size cpu (1 seed, 2,000 sentences, 6 epochs: what fit one session).
# Resumable: rerunning continues unfinished cells. Tables land in runs/switch/*/compare.md.
set -euo pipefail
L=${LAGVAE:-.venv/bin/lagvae}
for rule in mi mi_full; do
  $L compare synthetic --methods aggressive --seeds 3 --epochs 10 --train-limit 6000 --jobs 2 \
    --out "runs/switch/synthetic-$rule" --set "train.aggressive.switch_on=$rule" --set eval.iw_samples=100
done
for rule in mi mi_full; do
  $L compare ptb --size cpu --methods aggressive --seeds 1 --epochs 6 --train-limit 2000 --jobs 1 \
    --out "runs/switch/ptb-$rule" --set "train.aggressive.switch_on=$rule" --set eval.iw_samples=50 \
    --set data.eval_limit=500 &
done
wait
