#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-test-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
set +e
python3 -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
