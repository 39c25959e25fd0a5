#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest).
# Uses the running one when there is one; otherwise installs Debian's rabbitmq-server if missing,
# starts it detached, bound to loopback, and waits until it is ready.
set -euo pipefail

port_open() {
    python3 - <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("127.0.0.1", 5672))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

if port_open; then
    echo "rabbitmq: already answering on 127.0.0.1:5672"
    exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "rabbitmq: installing rabbitmq-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
echo "rabbitmq: starting (rabbitmq-server -detached)"
rabbitmq-server -detached
for _ in $(seq 1 60); do
    if port_open; then
        rabbitmqctl await_startup >/dev/null 2>&1 || true
        echo "rabbitmq: ready on 127.0.0.1:5672"
        exit 0
    fi
    sleep 1
done
echo "rabbitmq: did not come up within 60 s" >&2
exit 1
