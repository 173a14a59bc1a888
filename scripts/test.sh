#!/usr/bin/env bash
# Set up the environment and run the whole test suite (unit, integration and the slow
# tests that start real Flower processes). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${IMPLANTFL_VENV:-.venv}"  # the environment setup_env.sh made
exec "$VENV/bin/python" -m pytest "$@"
