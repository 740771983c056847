#!/usr/bin/env bash
# Issue 14: real-data grids run to the LR rule's stop or an epoch cap, 3 seeds, sized to the 2-core CPU budget
# (docs/RESULTS.md gives the costs they were planned from). Each grid writes into docs/data/grids/<name>; the
# small files of finished cells (config, metrics, final, per-example test NLL) are committed there (`keep`),
# the checkpoints are not (the folder is git-ignored), so a grid spans sessions: a rerun keeps finished cells and trains the rest.
# Usage: bash scripts/converge_real.sh STEP [STEP ...]
#   steps: ptb-plain ptb-aggressive ptb-savae ptb-later synthetic yelp yahoo yahoo-best omniglot omniglot-later, then report (tables of what has finished), keep
# `report` trains nothing (--report-only): it rebuilds each grid's compare.md, .csv, .json and _curves.png from the
# committed cells, so a change to the tables (docs/DESIGN.md, "Verdicts") is one `bash scripts/converge_real.sh report`.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/bin/.installed
L=${LAGVAE:-.venv/bin/lagvae}
JOBS=${JOBS:-2}
OUT=${OUT:-docs/data/grids}  # a checkout pinned for a long grid writes into the main one
# PTB: the full 10k vocabulary (built from the whole training file), the first 3,000 training sentences, the
# first 1,000 validation and test sentences, K = 500, an epoch cap of 40.
PTB=(ptb --size cpu --seeds 3 --epochs 40 --train-limit 3000 --set data.vocab_from=all --set data.eval_limit=1000
  --set eval.iw_samples=500)
# Yelp: the same model and budget with a 10k-word vocabulary from the whole training file.
YELP=(yelp --size cpu --seeds 3 --epochs 40 --train-limit 3000 --set data.max_vocab=10000 --set data.vocab_from=all
  --set data.eval_limit=1000 --set eval.iw_samples=500)
# OMNIGLOT: omniglot-small on the first 2,000 training images (an aggressive epoch of the whole set would cost
# ~35 min here, and the paper's patience rule keeps at least 5), 50 epochs, 1,000 test images at K = 500.
OMNI=(omniglot-small --seeds 3 --epochs 50 --train-limit 2000 --set data.eval_limit=1000 --set eval.iw_samples=500)
# Yahoo (issue 23): the first 1,000 training documents, validation on the 1,000 held out, the first 1,000 test
# documents at K = 500, cap 100 (the LR rule ends them: a plain epoch is ~21 s; a cap of 30 ended the first cells still improving)
YAHOO=(yahoo --size cpu --seeds 3 --epochs 100 --train-limit 1000 --set data.eval_limit=1000 --set eval.iw_samples=500)
# Issue 22: the later fixes, added to the grids above (same cells, same test examples, so they pair with the old)
LATER=pretrain-fb,bn-vae,delta-vae,du-vae,skip-vae,mdr
# synthetic: the preset as it is (16,000 / 2,000 / 2,000 sentences, 50 epochs, the LR rule), K = 500
SYN=(synthetic --epochs 50 --set eval.iw_samples=500)
for step in "$@"; do
  case "$step" in
    ptb-plain)  # the cells without an aggressive phase: about one session of the 2 cores
      time $L compare "${PTB[@]}" --methods vae,vae-anneal,lm,cyclical,free-bits=0.5 --jobs "$JOBS" --out $OUT/ptb ;;
    ptb-aggressive)
      time $L compare "${PTB[@]}" --methods aggressive-anneal,aggressive --jobs "$JOBS" --out $OUT/ptb ;;
    ptb-savae)  # one seed, a 3-epoch cap (later flags win): an SA-VAE step costs ~90 joint steps (9-27 s), 15-42 min an epoch,
      # so 3 epochs and the test fit one 3-hour session beside the OMNIGLOT grid (half-trained cells do not outlive one)
      time $L compare "${PTB[@]}" --seeds 1 --epochs 3 --methods savae-anneal --jobs 1 --out $OUT/ptb ;;
    ptb-later)  # issue 22's later fixes, seed 0 of each first (SEEDS=1), then all 3
      time $L compare "${PTB[@]}" --seeds "${SEEDS:-3}" --methods "$LATER" --jobs "$JOBS" --out $OUT/ptb ;;
    synthetic)  # the converged synthetic setting: all 16k training sentences, 50 epochs, the LR rule
      time $L compare "${SYN[@]}" --seeds "${SEEDS:-3}" --methods "vae,vae-anneal,aggressive,aggressive-anneal,$LATER" \
        --jobs "$JOBS" --out $OUT/synthetic ;;
    omniglot-later)  # the fixes whose authors define images (du-vae, skip-vae) or that touch only q (bn, delta)
      time $L compare "${OMNI[@]}" --seeds "${SEEDS:-3}" --methods bn-vae,delta-vae,du-vae,skip-vae --jobs "$JOBS" \
        --out $OUT/omniglot ;;
    yahoo)  # issue 23: the reduced Yahoo setting (docs/RESULTS.md), the 2018 baselines, then the later fixes
      time $L compare "${YAHOO[@]}" --methods vae,vae-anneal,aggressive-anneal,lm --jobs "$JOBS" --out $OUT/yahoo
      time $L compare "${YAHOO[@]}" --seeds 1 --methods "aggressive,$LATER" --jobs "$JOBS" --out $OUT/yahoo ;;
    yahoo-best)  # the two later fixes with the lowest seed-0 test NLL on Yahoo, on all 3 seeds (seed 0 is kept)
      BEST=$(.venv/bin/python -c 'import json, pathlib, sys
out, methods = pathlib.Path(sys.argv[1]), sys.argv[2].split(",")
nll = {m: json.loads(f.read_text())["nll"] for m in methods if (f := out / m / "seed0" / "final.json").exists()}
if len(nll) < len(methods):
    sys.exit(f"yahoo-best: seed 0 of {sorted(set(methods) - set(nll))} has not finished (run the yahoo step)")
print(",".join(sorted(nll, key=nll.get)[:2]))' "$OUT/yahoo" "$LATER")
      echo "the two later fixes with the lowest seed-0 NLL on Yahoo: $BEST"
      time $L compare "${YAHOO[@]}" --methods "$BEST" --jobs "$JOBS" --out $OUT/yahoo ;;
    yelp)
      time $L compare "${YELP[@]}" --methods aggressive-anneal,vae-anneal,lm --jobs "$JOBS" --out $OUT/yelp ;;
    omniglot)
      time $L compare "${OMNI[@]}" --methods aggressive-anneal,vae,vae-anneal,pixelcnn --jobs "$JOBS" --out $OUT/omniglot ;;
    report)
      $L compare "${PTB[@]}" --reference aggressive-anneal --out $OUT/ptb --report-only \
        --methods vae,vae-anneal,aggressive,aggressive-anneal,lm,cyclical,free-bits=0.5,savae-anneal,$LATER
      if [ -d $OUT/synthetic ]; then
        $L compare "${SYN[@]}" --seeds 3 --methods "vae,vae-anneal,aggressive,aggressive-anneal,$LATER" \
          --reference aggressive-anneal --out $OUT/synthetic --report-only
      fi
      $L compare "${YELP[@]}" --methods aggressive-anneal,vae-anneal,lm --out $OUT/yelp --report-only
      $L compare "${OMNI[@]}" --methods aggressive-anneal,vae,vae-anneal,pixelcnn,bn-vae,delta-vae,du-vae,skip-vae \
        --out $OUT/omniglot --report-only
      if [ -d $OUT/yahoo ]; then
        $L compare "${YAHOO[@]}" --methods "vae,vae-anneal,aggressive-anneal,lm,aggressive,$LATER" \
          --reference aggressive-anneal --out $OUT/yahoo --report-only
      fi
      # the benchmark page over every grid; it also refills the tables of docs/RESULTS.md (its generated blocks)
      $L report $OUT --out docs/benchmark --docs docs/RESULTS.md ;;
    keep)  # stage finished cells' small files (the folder is git-ignored, so half-trained cells never are)
      for final in $(find $OUT -name final.json); do
        cell=$(dirname "$final")
        for f in config.json metrics.jsonl final.json test_nll.csv provenance.json; do
          [ -e "$cell/$f" ] && git add -f "$cell/$f"
        done
      done
      git add -f $OUT/*/compare.md $OUT/*/compare.csv $OUT/*/compare.json $OUT/*/compare_curves.png 2>/dev/null || true ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
