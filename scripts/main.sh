#!/usr/bin/env bash
# The main job: set up the environment, pretrain the public encoder (once; cached), generate
# the default synthetic federation (hip-consortium, 8 sites), run it with the dp-stats head
# and DP at every site, the baselines, and print a summary. Extra arguments go to
# `implantfl-sim run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${IMPLANTFL_VENV:-.venv}"  # the environment setup_env.sh made
exec "$VENV/bin/implantfl-sim" run --preset hip-consortium --out "${IMPLANTFL_OUT:-runs/main-$(date +%Y%m%d-%H%M%S)}" "$@"
