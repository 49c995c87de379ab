#!/usr/bin/env bash
# Set everything up (idempotent), start the embedded platform and run the demo:
# fingerprint a small photo collection in containers, then find its near-duplicates.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
.venv/bin/offload up
.venv/bin/python examples/demo.py
echo "The platform is still up: .venv/bin/offload ls | logs ID | down"
