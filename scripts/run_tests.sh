#!/usr/bin/env bash
# Quick start: set up the environment, then run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_browser.sh
exec .venv/bin/python -m pytest "$@"
