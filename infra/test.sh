#!/usr/bin/env bash
# Set everything up (idempotent), then lint, type-check and run the whole test suite.
# Extra arguments go to pytest, e.g. `./infra/test.sh -k cancel`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
export TESTCONTAINERS_RYUK_DISABLED=true
echo "test: ruff"
.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check src tests bench examples
echo "test: mypy"
.venv/bin/mypy
echo "test: import layers (import-linter; contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache
echo "test: pytest"
# pytest exits 5 when no test ran; like every non-zero code, that fails this script.
exec .venv/bin/pytest "$@"
