#!/usr/bin/env bash
# Issue 23, item 5: what the paper's Yahoo model (--size paper: 512/1024 LSTMs, z = 32, batch 32) costs on a GPU.
# Times plain and aggressive steps and the K = 500 test per document (benchmarks/bench_steps.py), then
# extrapolates to the full reproduction: 100,000 training documents, the preset's 30-epoch cap with 4 aggressive
# epochs (PTB's cells averaged 3.7), the 10,000 test documents.
# Prepare here: mkdir -p .gpudata/yahoo && cp ../shared/data/yahoo/*.txt .gpudata/yahoo/  (git-ignored; carry it)
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LAGVAE_DATA=$PWD/.gpudata PYTHONPATH=src
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name())"
for m in vae-anneal aggressive-anneal; do
  timeout 240 python3 benchmarks/bench_steps.py yahoo "$m" --size paper --seconds 30 --iw-samples 500 \
    --extrapolate 100000,4,10000 2>&1 | tail -2 | tee -a "$OUT/yahoo_paper.txt"
done
