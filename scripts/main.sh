#!/usr/bin/env bash
# The main job: set up the environment, generate the default synthetic federation
# (hip-consortium, 8 sites), run a simulated federated training with DP-SGD on it, train
# the pooled baseline, and print a summary. Extra arguments go to `implantfl-sim run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/implantfl-sim run --preset hip-consortium --out "${IMPLANTFL_OUT:-runs/main-$(date +%Y%m%d-%H%M%S)}" "$@"
