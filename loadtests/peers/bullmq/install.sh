#!/usr/bin/env bash
# Installs the BullMQ peer's npm packages (from package-lock.json) into node_modules here.
# Needs Node.js 18+ and npm; on Debian: apt-get install -y nodejs npm.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y nodejs npm
  else
    echo "install Node.js 18+ and npm first" >&2
    exit 1
  fi
fi
npm ci --no-audit --no-fund --loglevel=error
