#!/usr/bin/env bash
# Install what the tests need, start the real services (Slurm cluster, RabbitMQ), run the gates
# and every test, and stop what this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

python3 -m pip install -q --disable-pip-version-check -e ./sdk -e '.[mpi,providers,test,bench,postgres,multiuser]'

bash ci/rabbitmq.sh
bash ci/postgres.sh
bash ci/redis.sh
bash ci/users.sh
if [ -f ci/slurm-docker/start.sh ]; then
    trap 'bash "$REPO/ci/slurm-docker/stop.sh" || true' EXIT
    bash ci/slurm-docker/start.sh
fi

ruff check src sdk tests benchmarks
ruff format --check src sdk tests benchmarks
mypy src sdk/src
lint-imports

python3 -m pytest "$@"
