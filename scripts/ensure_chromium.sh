#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the dashboard's browser test
# (tests/integration/test_dashboard_browser.py drives /usr/bin/chromium with Playwright;
# Playwright's own browser download cannot work on these machines).
#
# Installs it with apt-get when missing (as root, or through passwordless sudo). When that is
# impossible it says why and exits 0: the browser test then skips with the same reason,
# except under CI=true, where the test fails instead of skipping.
set -uo pipefail

CHROMIUM="${AE_ANOMALY_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

say() { echo "ensure_chromium: $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1; then
    say "$CHROMIUM is missing and apt-get is not available: the browser test will not run" \
        "(install Chromium and set AE_ANOMALY_CHROMIUM to its path)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        say "$CHROMIUM is missing and installing it needs root: run" \
            "'apt-get install -y chromium' as root; the browser test will not run"
        exit 0
    fi
fi

say "installing Debian's chromium with apt-get (once; about a minute)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >/dev/null; then
    say "apt-get update failed: the browser test will not run"
    exit 0
fi
if ! $SUDO apt-get install -y -q chromium >/tmp/ensure_chromium.log 2>&1; then
    tail -n 20 /tmp/ensure_chromium.log >&2
    say "apt-get install chromium failed (log: /tmp/ensure_chromium.log): the browser test" \
        "will not run"
    exit 0
fi
if [ -x "$CHROMIUM" ]; then
    say "installed: $("$CHROMIUM" --version 2>/dev/null | head -n 1)"
else
    say "chromium installed but $CHROMIUM is not there: the browser test will not run"
fi
exit 0
