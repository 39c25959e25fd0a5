#!/usr/bin/env bash
# Make sure Debian's redis-server is installed: the ProxyStore tests start (and end) their own
# server on a free port from it. Idempotent; starts nothing.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis: installing redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
