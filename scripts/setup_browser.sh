#!/usr/bin/env bash
# The browser of the report-page tests: Debian's chromium and chromium-driver, installed when this
# runs as root with apt-get and they are missing. Never fatal: without them the browser tests skip
# and say why.
set -uo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no chromium/chromedriver and no root apt-get to install them: the browser tests will skip" >&2
    exit 0
fi
echo "Installing Debian's chromium and chromium-driver for the report-page tests (first run only)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
       || { apt-get update -q >/dev/null 2>&1 \
            && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; }; then
    echo "note: apt-get could not install chromium: the browser tests will skip" >&2
fi
exit 0
