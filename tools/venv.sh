# Sourced by tools/run.sh and tools/test.sh: make or reuse .venv and install sipgw into it.
#
#   sipgw_venv [EXTRA]   # EXTRA: "test" for the test extras; none for the daemon alone
#
# The venv is made with the interpreter the OS ships (/usr/bin/python3; SIPGW_PYTHON
# overrides it), never pip-installing into the system interpreter (PEP 668). Versions
# come from constraints.txt (tools/lock.sh refreshes it). The venv is reused while
# setup.py, constraints.txt and the interpreter are unchanged.
SIPGW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$SIPGW_ROOT/.venv"

sipgw_python() {
    if [ -n "${SIPGW_PYTHON:-}" ]; then
        echo "$SIPGW_PYTHON"
    elif [ -x /usr/bin/python3 ]; then
        echo /usr/bin/python3
    else
        command -v python3
    fi
}

sipgw_venv() {
    local extra="${1:-}" python stamp want spec
    # python3-venv brings ensurepip (Debian splits it out); python3-dev and gcc for
    # any dependency that has no wheel for this interpreter.
    bash "$SIPGW_ROOT/tools/apt-install.sh" python3 python3-venv python3-dev gcc
    python="$(sipgw_python)"
    want="$(cat "$SIPGW_ROOT/setup.py" "$SIPGW_ROOT/constraints.txt" | sha256sum | cut -c1-16) $("$python" -c 'import sys; print(sys.version.split()[0])')"
    stamp="$VENV/.sipgw-installed${extra:+-$extra}"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "venv: $VENV is current${extra:+ (with [$extra])}"
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        echo "venv: creating $VENV with $python"
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
    fi
    spec="."
    if [ -n "$extra" ]; then
        spec=".[$extra]"
    fi
    echo "venv: installing sipgw${extra:+[$extra]} into $VENV (constraints.txt)"
    # compat mode puts the checkout on sys.path, so twisted/plugins/ in it is found by twistd
    (cd "$SIPGW_ROOT" && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c constraints.txt -e "$spec" --config-settings editable_mode=compat)
    rm -f "$VENV"/.sipgw-installed*
    echo "$want" > "$stamp"
    if [ -n "$extra" ]; then
        echo "$want" > "$VENV/.sipgw-installed"  # the extras include the daemon
    fi
}
