#!/usr/bin/env bash
# Create ./.venv with the pinned requirements (skipped when they are already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
if command -v sha256sum >/dev/null; then
    wanted=$(sha256sum requirements.txt | cut -d' ' -f1)
else  # macOS
    wanted=$(shasum -a 256 requirements.txt | cut -d' ' -f1)
fi
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
echo "Setting up .venv from requirements.txt (first run only; torch is large, this takes a few minutes)"
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -r requirements.txt
echo "$wanted" > "$stamp"
