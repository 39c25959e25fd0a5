#!/usr/bin/env bash
# Local accounts for the multi-user endpoint tests (marker multiuser): mu-alice and mu-bob,
# ordinary users with home directories. Idempotent; removes nothing. Needs root.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "ci/users.sh: not root; the multiuser tests will fail under CI" >&2
    exit 0
fi
for name in mu-alice mu-bob; do
    id -u "$name" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$name"
done
# A user endpoint runs this interpreter (and the task's python) as the mapped user: every
# directory on its path must be traversable. On the CI image the interpreter lives under
# /root (pyenv), which is 0700; give others search (x) permission only, not read.
# The same for the checkout (the editable install's src/ and the block agents' PYTHONPATH).
PY=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
for start in "$(dirname "$PY")" "$REPO/src"; do
    dir=$start
    while [ "$dir" != / ]; do
        if ! runuser -u mu-alice -- test -x "$dir"; then
            chmod o+x "$dir"
        fi
        dir=$(dirname "$dir")
    done
done
runuser -u mu-alice -- "$PY" -c 'import mpiengine.multiuser.userep' \
    || { echo "ci/users.sh: mu-alice cannot import mpiengine with $PY" >&2; exit 1; }
