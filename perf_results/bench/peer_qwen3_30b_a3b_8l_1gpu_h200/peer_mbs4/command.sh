#!/usr/bin/env bash
# moe-bench: the Hugging Face transformers peer
set -euo pipefail
cd /work/main/.snap
export PYTHONUNBUFFERED=1
exec /opt/torch/.venv/bin/python3 -m recipes.peer_hf --spec /tmp/i6/peer8l/peer_mbs4/spec.json --run-dir /tmp/i6/peer8l/peer_mbs4
