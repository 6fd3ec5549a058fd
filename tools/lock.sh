#!/usr/bin/env bash
# Refresh constraints.txt: resolve setup.py's dependencies (with the test extras) afresh in
# a throw-away venv of the OS's python3 and write the exact versions. Run it when setup.py
# changes or to take newer releases, then run `bash tools/test.sh` and commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
bash tools/apt-install.sh python3 python3-venv python3-dev gcc
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$(sipgw_python)" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check '.[test]'
{
    echo "# Exact versions the test suite passed with; written by tools/lock.sh, used by"
    echo "# tools/run.sh and tools/test.sh (pip install -c constraints.txt)."
    "$tmp/venv/bin/python" -m pip freeze --all --disable-pip-version-check --exclude sipgw --exclude pip
} > constraints.txt
echo "lock: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
