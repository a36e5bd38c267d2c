#!/usr/bin/env bash
# moe-bench: the Hugging Face transformers peer
set -euo pipefail
cd /work/main
export PYTHONUNBUFFERED=1
exec /opt/torch/.venv/bin/python3 -m recipes.peer_hf --spec /tmp/i17l/bench/peer_mbs8/spec.json --run-dir /tmp/i17l/bench/peer_mbs8
