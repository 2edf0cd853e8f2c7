#!/usr/bin/env bash
# Quick start: set up the environment, then train and evaluate on the embedded synthetic demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python train.py demo "$@"
