#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run them all.
# Python packages go into .venv (made with the OS's python3, see tools/venv.sh), the peers
# from Debian's packages (tools/install-test-deps.sh). The tests run in a private network
# namespace with only loopback up, so no test packet (SIP, RTP, ICE) can reach another address.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-test-deps.sh
. tools/venv.sh
sipgw_venv test
# The wheels of every runtime dependency (and the build backend), so that the install test
# can make a fresh venv from sipgw's wheel inside the namespace, where there is no network.
wheels_stamp="$(cat setup.py pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ "$(cat var/wheels/.stamp 2>/dev/null)" != "$wheels_stamp" ]; then
    echo "test.sh: collecting dependency wheels into var/wheels"
    rm -rf var/wheels
    .venv/bin/python -m pip wheel --quiet --disable-pip-version-check -w var/wheels \
        -c constraints.txt . setuptools
    rm -f var/wheels/sipgw-*
    echo "$wheels_stamp" > var/wheels/.stamp
fi
run=(.venv/bin/python -m pytest -p no:cacheprovider "$@")
if [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
    run=(unshare -n -- sh -c 'ip link set lo up && exec "$@"' sh "${run[@]}")
else
    echo "test.sh: cannot make a network namespace (needs root); running on the host's loopback" >&2
fi
set +e
"${run[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
