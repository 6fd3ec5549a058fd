#!/usr/bin/env bash
# Install sipgw and run the daemon in the foreground with the shipped etc/ config.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e . --config-settings editable_mode=compat
exec twistd -n --reactor=asyncio sipgw "$@"
