#!/usr/bin/env bash
# Install the named Debian packages that are missing (apt-get, through sudo when not root).
# Idempotent: does nothing, and needs no network, when every package is installed.
set -euo pipefail
missing=()
for pkg in "$@"; do
    # "install ok installed" only once the package is fully configured
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "apt-install: all $# packages present"
    exit 0
fi
echo "apt-install: installing ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
