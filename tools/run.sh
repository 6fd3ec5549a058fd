#!/usr/bin/env bash
# Install sipgw into .venv (made with the OS's python3) and run the daemon in the
# foreground. Without --config it runs on the built-in defaults (etc/sipgw.properties
# documents them); extra arguments go to the plugin, e.g. --config FILE --set key=value.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
sipgw_venv
exec .venv/bin/twistd -n --pidfile= --reactor=asyncio sipgw "$@"
