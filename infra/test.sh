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
# Tests run in OFFLOAD_TEST_WORKERS processes (pytest-xdist; default 3: most of a test's time is
# spent waiting on containers and workers, not on the CPU), each with its own redis-server,
# Redis databases, homes and ports; nothing they share is written by two at once.
exec .venv/bin/pytest -n "${OFFLOAD_TEST_WORKERS:-3}" --dist loadgroup "$@"
