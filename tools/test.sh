#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run them all.
# The tests run in a private network namespace with only loopback up, so no test
# packet (SIP, RTP, ICE) can ever reach another address.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-test-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
run=(python3 -m pytest -p no:cacheprovider "$@")
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
