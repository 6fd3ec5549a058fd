"""sipgw as an operator installs it: its wheel in a fresh venv, with no extras and no network.

The venv gets only what the wheel declares (install_requires), from var/wheels, which
tools/test.sh fills before the tests enter their network namespace. Every module of
sipgw must import there, and the daemon must start from a folder outside the checkout,
with no config file, and answer REST.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from importlib import metadata

import pytest

from sipgw_daemon import RestError, Sipgw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHEELS = os.path.join(ROOT, "var", "wheels")
# the venv's python must not see the checkout (a PYTHONPATH pointing at it, for one)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

IMPORT_ALL = """
import pkgutil, sys, sipgw
assert not sipgw.__file__.startswith(sys.argv[1]), sipgw.__file__
names = [m.name for m in pkgutil.walk_packages(sipgw.__path__, "sipgw.")]
for name in names:
    __import__(name)
print(len(names))
"""


def run(args, **kwargs) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=CLEAN_ENV,
                            **kwargs)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> str:
    """A fresh venv of the base interpreter with sipgw's wheel installed, nothing else asked."""
    if not os.path.isfile(os.path.join(WHEELS, ".stamp")):
        pytest.fail(f"{WHEELS} is missing: tools/test.sh collects the dependency wheels",
                    pytrace=False)
    tmp = tmp_path_factory.mktemp("install")
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--find-links", WHEELS, "-w", str(dist), ROOT])
    wheel, = glob.glob(str(dist / "sipgw-*.whl"))
    env_dir = str(tmp / "venv")
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", env_dir])
    run([os.path.join(env_dir, "bin", "python"), "-m", "pip", "install", "--quiet",
         "--no-index", "--find-links", WHEELS, "-c", os.path.join(ROOT, "constraints.txt"),
         wheel])
    return env_dir


def test_wheel_declares_every_dependency(venv):
    """In a venv holding only the wheel and its declared requirements, every sipgw module imports."""
    python = os.path.join(venv, "bin", "python")
    run([python, "-m", "pip", "check"])
    count = int(run([python, "-c", IMPORT_ALL, ROOT], cwd=venv))
    assert count >= 40
    installed = run([python, "-m", "pip", "list", "--format=freeze"]).lower()
    for test_only in ("pytest", "hypothesis", "selenium"):
        assert f"\n{test_only}==" not in "\n" + installed


def test_installed_daemon_starts_anywhere_on_built_in_defaults(venv, tmp_path, monkeypatch):
    """The venv's twistd runs sipgw from an unrelated folder with no config file and no
    setting but its ports; REST answers."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    daemon = Sipgw(str(elsewhere), twistd=[os.path.join(venv, "bin", "twistd")], defaults=True)
    try:
        daemon.start(timeout=60)
        with pytest.raises(RestError) as answer:
            daemon.rest("/call/find_all")
        assert answer.value.code == 404  # WCS: no calls
        log = daemon.log()
        assert f"sipgw {metadata.version('sipgw')} (Python " in log
        assert "settings: built-in defaults" in log
    finally:
        assert daemon.stop() in (0, -15)
    assert "Traceback" not in daemon.log()
