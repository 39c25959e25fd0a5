#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 with a database for the relay's tests:
# role mpiengine (password mpiengine) owning database mpiengine_test, i.e.
#   postgresql://mpiengine:mpiengine@127.0.0.1:5432/mpiengine_test   (MPIENGINE_TEST_POSTGRES)
# Uses the running server when there is one; otherwise installs Debian's postgresql if missing
# and starts its cluster. Idempotent.
set -euo pipefail

port_open() {
    python3 - <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

if ! port_open; then
    if ! ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1; then
        echo "postgres: installing postgresql"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "postgres: starting cluster $version/main"
    # --skip-systemctl-redirect: containers have no systemd; pg_ctlcluster starts it itself.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
        port_open && break
        sleep 1
    done
    if ! port_open; then
        echo "postgres: did not come up within 60 s" >&2
        exit 1
    fi
else
    echo "postgres: already answering on 127.0.0.1:5432"
fi

# As the server's superuser: over its local socket (peer authentication) when we are root,
# else over TCP as user postgres (a server with trust or a password in ~/.pgpass).
as_superuser() {
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -At "$@")
    else
        psql -X -q -v ON_ERROR_STOP=1 -At -h 127.0.0.1 -U postgres "$@"
    fi
}

if [ "$(as_superuser -c "SELECT 1 FROM pg_roles WHERE rolname = 'mpiengine'")" != 1 ]; then
    as_superuser -c "CREATE ROLE mpiengine LOGIN PASSWORD 'mpiengine'"
fi
if [ "$(as_superuser -c "SELECT 1 FROM pg_database WHERE datname = 'mpiengine_test'")" != 1 ]; then
    as_superuser -c "CREATE DATABASE mpiengine_test OWNER mpiengine"
fi
echo "postgres: ready (postgresql://mpiengine:***@127.0.0.1:5432/mpiengine_test)"
