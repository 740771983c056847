#!/usr/bin/env bash
# What "your own corpus" costs with the defaults (README, "Your own corpus"): builds a corpus of realistic
# document length from the Yelp sentences in ../shared/data (consecutive sentences joined into documents of
# 60-220 tokens: 1,000 train, 100 valid, 100 test), then times one epoch of `lagvae train text --size cpu`
# and its IW test (K = 500) on one thread, with peak RSS from /usr/bin/time.
# Usage: bash scripts/own_corpus_cost.sh [METHOD]   (default vae; ~15 min on the 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/bin/.installed
CORPUS=${CORPUS:-/tmp/lagvae-own-corpus}
.venv/bin/python - "$CORPUS" <<'PY'
import random, sys
from pathlib import Path
from lagvae.data.corpus import default_data_root

root, out = default_data_root(), Path(sys.argv[1])
lines = []
for name in ("sentiment.test.1", "sentiment.test.0"):
    lines += (root / "yelp_sentences" / name).read_text().splitlines()
rng, docs, i = random.Random(0), [], 0
while len(docs) < 1200:
    target, doc = rng.randint(60, 220), []
    while len(doc) < target:
        doc += lines[i].split()
        i += 1
    docs.append(" ".join(doc[:220]))
out.mkdir(parents=True, exist_ok=True)
for name, part in (("train", docs[:1000]), ("valid", docs[1000:1100]), ("test", docs[1100:])):
    (out / f"{name}.txt").write_text("\n".join(part) + "\n")
print(f"{out}: 1,000 / 100 / 100 documents of 60-220 tokens")
PY
rm -rf /tmp/lagvae-own-corpus-run
/usr/bin/time -v .venv/bin/lagvae train text --method "${1:-vae}" --size cpu --epochs 1 --no-progress --json --threads 1 \
  --set "data.path=$CORPUS" --out /tmp/lagvae-own-corpus-run 2>&1 | grep -E "lagvae:|train_seconds|Elapsed|Maximum resident"
