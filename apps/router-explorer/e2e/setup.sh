#!/usr/bin/env bash
# Installs what the router explorer's browser test needs: Debian's chromium (when missing and running as
# root) and playwright-core from e2e/package-lock.json (npm ci). Without them the test is skipped with a
# reason. Usage: bash apps/router-explorer/e2e/setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "router-explorer e2e: installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "router-explorer e2e: chromium missing and not root; the browser test will be skipped" >&2
  fi
fi

if command -v npm >/dev/null 2>&1; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "router-explorer e2e: npm missing; the browser test will be skipped (install nodejs >= 20 and npm)" >&2
fi
