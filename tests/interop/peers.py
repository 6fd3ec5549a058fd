"""Real SIP peers for the interop tests: SIPp, Kamailio and baresip.

Each peer is a foreground process that the test starts and stops by pid, in a
process group of its own, talking only to 127.0.0.1, with its files in a
scratch directory.  Every SIP and control socket is bound to 127.0.0.1; only
baresip 1.0.0 binds its RTP and DNS-client sockets to the wildcard address
(hard-coded in it), though it sends to 127.0.0.1 only.  ``start()`` returns once the peer is ready (its socket is bound, it
answers OPTIONS, or it logged its registration), waiting on that event rather
than sleeping a fixed time; ``stop()`` is always safe to call, twice too.

Every process group started here is remembered, so that the test session can
check at its end that none is left running (``leftover_processes()``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
INSTALL_HINT = "run tools/install-test-deps.sh (as root) to install the test peers"
DEFAULT_USERS: Mapping[str, str] = {"alice": "alicepw", "bob": "bobpw"}

# kamailio lives in /usr/sbin, which is not on every PATH
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_POLL_S = 0.02

T = TypeVar("T")


class PeerError(RuntimeError):
    """A peer failed to start, exited early or did not get ready in time."""


class PeerMissing(PeerError):
    """A peer's program is not installed."""


def require_program(name: str) -> str:
    """Return the path of ``name`` or raise PeerMissing with the install hint."""
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH]))
    if path is None:
        raise PeerMissing(f"{name!r} is not installed: {INSTALL_HINT}")
    return path


def require(*programs: str) -> None:
    """Fail the current test unless every program is installed."""
    import pytest
    for program in programs:
        try:
            require_program(program)
        except PeerMissing as missing:
            pytest.fail(str(missing), pytrace=False)


# --------------------------------------------------------------------------
# ports

_handed_out: set[int] = set()


def _can_bind(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port(kind: str = "udp", count: int = 1) -> int:
    """Return a port on 127.0.0.1 that is free for both UDP and TCP.

    ``kind`` ("udp" or "tcp") is the transport the caller needs and is asked
    from the kernel first; the port is checked free for the other one too.
    With ``count`` > 1, ports ``p .. p+count-1`` are all free (RTP pairs).
    A port is never handed out twice in one process, so two peers started
    before either binds do not collide.
    """
    if kind not in ("udp", "tcp"):
        raise ValueError(f"kind must be 'udp' or 'tcp', not {kind!r}")
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    for _ in range(200):
        with socket.socket(socket.AF_INET, sock_type) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        block = range(port, port + count)
        if port + count > 65535 or any(p in _handed_out for p in block):
            continue
        if all(_can_bind(p) for p in block):
            _handed_out.update(block)
            return port
    # Wide blocks: the ports handed out over a long session are spread over the kernel's
    # ephemeral range, so a random start rarely has room; look below it, start by start.
    for port in range(10000, 65535 - count, count if count > 1 else 1):
        block = range(port, port + count)
        if not any(p in _handed_out for p in block) and all(_can_bind(p) for p in block):
            _handed_out.update(block)
            return port
    raise PeerError(f"found no block of {count} free port(s) on {HOST}")


def bound_ports(pids: Iterable[int], proto: str) -> set[int]:
    """Ports of the IPv4 and IPv6 sockets that ``pids`` hold: bound (udp) or listening (tcp)."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table_name in (proto, proto + "6"):
        try:
            table = open(f"/proc/net/{table_name}")
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        with table:
            next(table)
            for line in table:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if proto == "tcp" and state != "0A":  # TCP_LISTEN
                    continue
                if inode in inodes:
                    ports.add(int(local.split(":")[1], 16))
    return ports


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    process: subprocess.Popen | None = None,
    log: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something true, and return that.

    Raise PeerError when ``timeout`` seconds pass or ``process`` exits first,
    with the tail of ``log()`` in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            reason = (
                f"exited with code {process.returncode}" if exited else f"not within {timeout:g} s"
            )
            tail = log()[-3000:] if log is not None else ""
            raise PeerError(f"{what}: {reason}\n--- log tail ---\n{tail}")
        time.sleep(_POLL_S)


# --------------------------------------------------------------------------
# processes

_started_groups: set[int] = set()


def track_group(pgid: int) -> None:
    """Count process group ``pgid`` (a process started with start_new_session=True, such as
    the sipgw daemon) among those leftover_processes() reports and kill_leftovers() kills."""
    _started_groups.add(pgid)


def _no_core_dumps() -> None:
    # baresip dumps a 60 MB core when it crashes
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command may contain spaces and parentheses: fields follow the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


#: a secret in a command line (the daemon's --set rest_auth_tokens=..., sip_password=...)
_SECRET_SETTING = re.compile(r"((?:token|password|secret|key)s?=)\S+", re.IGNORECASE)
_MASK = r"\1***"


def leftover_processes() -> dict[int, list[str]]:
    """Processes still alive in any group started here: {pgid: [pid command...]}."""
    found = {}
    for pgid in sorted(_started_groups):
        rows = []
        for pid in _group_members(pgid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            rows.append(f"{pid} {_SECRET_SETTING.sub(_MASK, cmd)}")
        if rows:
            found[pgid] = rows
    return found


def kill_leftovers() -> None:
    """SIGKILL every process still alive in a group started here."""
    for pgid in leftover_processes():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Peer:
    """One peer program run in the foreground in its own process group."""

    program = ""
    #: SIGTERMs sent (each followed by ``term_wait`` seconds) before SIGKILL
    terms = 1
    term_wait = 3.0

    def __init__(self, tmpdir: str | os.PathLike) -> None:
        self.tmpdir = Path(tmpdir)
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the program printed (stdout and stderr) so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _spawn(self, argv: Sequence[str], log_name: str) -> None:
        if self.process is not None:
            raise PeerError(f"{self.program} already started (pid {self.pid})")
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmpdir / log_name
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                list(argv),
                cwd=self.tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: pgid == pid
                preexec_fn=_no_core_dumps,
            )
        _started_groups.add(self.process.pid)

    def wait(self, timeout: float) -> int:
        """Wait for the program to exit by itself; return its exit code."""
        if self.process is None:
            raise PeerError(f"{self.program} was never started")
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(
                f"{self.program} (pid {self.pid}) still running after {timeout:g} s\n"
                f"--- log tail ---\n{self.log()[-3000:]}"
            ) from None

    def stop(self) -> int | None:
        """SIGTERM (``terms`` times), then SIGKILL; reap; return the exit code."""
        if self.process is None:
            return None
        proc = self.process
        for _ in range(self.terms):
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.term_wait)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # children the leader left behind (kamailio's workers after a SIGKILL)
        if _group_members(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return proc.returncode


# --------------------------------------------------------------------------
# SIPp

_COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TracedMessage:
    """One SIP message that SIPp sent or received, from its -trace_msg file."""

    direction: str  # "sent" or "received" (seen from SIPp)
    transport: str  # "UDP" or "TCP"
    first_line: str
    text: str  # the whole message, lines joined with "\n"

    @property
    def method(self) -> str | None:
        """Request method, or None for a response."""
        if self.first_line.startswith("SIP/2.0 "):
            return None
        return self.first_line.split(" ", 1)[0]

    @property
    def status(self) -> int | None:
        """Response status code, or None for a request."""
        if not self.first_line.startswith("SIP/2.0 "):
            return None
        return int(self.first_line.split()[1])

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) pairs in order, folded lines joined, names as written."""
        head = self.text.split("\n\n", 1)[0].split("\n")[1:]
        result: list[tuple[str, str]] = []
        for line in head:
            if line[:1] in (" ", "\t") and result:
                name, value = result[-1]
                result[-1] = (name, f"{value} {line.strip()}")
            elif ":" in line:
                name, value = line.split(":", 1)
                result.append((name.strip(), value.strip()))
        return result

    def header_values(self, name: str) -> list[str]:
        """All values of header ``name`` (any case, compact forms too)."""
        wanted = _COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if _COMPACT.get(n.lower(), n.lower()) == wanted]

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    @property
    def body(self) -> str:
        parts = self.text.split("\n\n", 1)
        return parts[1] if len(parts) > 1 else ""


_TRACE_SEPARATOR = re.compile(r"^-{20,} \d{4}-\d\d-\d\d [\d:.]+$", re.MULTILINE)
_TRACE_HEADER = re.compile(r"^(UDP|TCP|TLS|SCTP) message (sent|received)\b")


def parse_trace(text: str) -> list[TracedMessage]:
    """Parse a SIPp -trace_msg file into messages, in file order."""
    messages = []
    for block in _TRACE_SEPARATOR.split(text.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        match = _TRACE_HEADER.match(lines[0]) if lines else None
        if match is None:
            continue  # other notes SIPp writes in this file
        message = "\n".join(lines[1:]).strip("\n")
        if not message:
            continue
        first_line = message.split("\n", 1)[0]
        messages.append(TracedMessage(match.group(2), match.group(1), first_line, message))
    return messages


class Sipp(_Peer):
    """SIPp running one scenario in the foreground.

    A UAS (``remote`` None) is ready when its SIP socket is bound (UDP) or
    listening (TCP); a UAC when its control socket is bound.  Logs go to
    ``tmpdir`` under ``sipp-<scenario>-<port>.*``: ``.out`` (screens),
    ``.messages.log`` (-trace_msg), ``.errors.log``, ``.logs.log`` (<log>).

    ``scenario`` is a file name in tests/interop/scenarios or a path.
    ``calls`` is -m (exit after that many calls; None runs until stopped).
    ``variables`` become ``-set NAME VALUE`` (for <Global variables>).
    ``pause_ms`` is -d: the length of every <pause/> and <timewait/> without
    milliseconds (the UAS scenarios' final timewait, the UACs' call length).
    ``timeout_s`` is SIPp's own global timeout: it then exits with an error.
    ``host`` is the address its SIP and media sockets use (``::1`` for IPv6).
    """

    program = "sipp"
    term_wait = 2.0

    def __init__(
        self,
        scenario: str,
        *,
        port: int,
        transport: str = "u1",
        remote: str | None = None,
        extra_args: Iterable[str] = (),
        tmpdir: str | os.PathLike,
        calls: int | None = 1,
        variables: Mapping[str, str] | None = None,
        pause_ms: int = 0,
        timeout_s: float = 60,
        trace: bool = True,
        host: str = HOST,
    ) -> None:
        super().__init__(tmpdir)
        self.host = host
        if transport not in ("u1", "t1", "un", "tn"):
            raise ValueError(f"transport must be u1, t1, un or tn, not {transport!r}")
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else SCENARIOS / scenario
        if not self.scenario.is_file():
            raise FileNotFoundError(f"no SIPp scenario {self.scenario}")
        self.port = port
        self.transport = transport
        self.remote = remote
        self.extra_args = list(extra_args)
        self.calls = calls
        self.variables = dict(variables or {})
        self.pause_ms = pause_ms
        self.timeout_s = timeout_s
        self.trace = trace
        self.control_port = free_port("udp")
        self.media_port = free_port("udp", count=4)  # audio RTP/RTCP, video RTP/RTCP
        self.name = f"sipp-{self.scenario.stem}-{port}"
        self.messages_path = self.tmpdir / f"{self.name}.messages.log"
        self.errors_path = self.tmpdir / f"{self.name}.errors.log"
        self.actions_path = self.tmpdir / f"{self.name}.logs.log"

    @property
    def is_uas(self) -> bool:
        return self.remote is None

    @property
    def uri_host(self) -> str:
        """host:port to put in a SIP URI that reaches this SIPp."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def command(self) -> list[str]:
        argv = [
            require_program("sipp"),
            "-sf", str(self.scenario),
            "-t", self.transport,
            "-i", self.host, "-p", str(self.port), "-bind_local",
            "-ci", HOST, "-cp", str(self.control_port),
            "-mi", self.host, "-mp", str(self.media_port),
            "-nostdin",
            "-d", str(self.pause_ms),
            "-timeout", f"{self.timeout_s:g}s", "-timeout_error",
            "-trace_err", "-error_file", str(self.errors_path),
            "-trace_logs", "-log_file", str(self.actions_path),
        ]  # fmt: skip
        if self.trace:
            argv += ["-trace_msg", "-message_file", str(self.messages_path)]
        if self.transport.startswith("t"):
            # keep a call when the peer closes its TCP connection (e.g. during
            # the UAS timewait after the BYE): SIPp would count it failed
            argv += ["-reconnect_close", "false"]
        if self.calls is not None:
            argv += ["-m", str(self.calls)]
        for name, value in self.variables.items():
            argv += ["-set", name, str(value)]
        argv += self.extra_args
        if self.remote is not None:
            argv.append(self.remote)
        return argv

    def start(self, timeout: float = 10) -> Sipp:
        self._spawn(self.command(), f"{self.name}.out")
        proto = "udp" if self.transport.startswith("u") else "tcp"

        def ready() -> bool:
            assert self.pid is not None
            if self.control_port not in bound_ports([self.pid], "udp"):
                return False
            return not self.is_uas or self.port in bound_ports([self.pid], proto)

        wait_for(ready, timeout, f"{self.name} to bind", process=self.process, log=self.log)
        return self

    def messages(self) -> list[TracedMessage]:
        """SIP messages SIPp sent and received so far, in order."""
        if not self.messages_path.exists():
            return []
        return parse_trace(self.messages_path.read_text(errors="replace"))

    def received(self, method_or_status: str | int | None = None) -> list[TracedMessage]:
        """Messages SIPp received, optionally only one method or status code."""
        return _select(self.messages(), "received", method_or_status)

    def sent(self, method_or_status: str | int | None = None) -> list[TracedMessage]:
        """Messages SIPp sent, optionally only one method or status code."""
        return _select(self.messages(), "sent", method_or_status)

    def errors(self) -> str:
        return self.errors_path.read_text(errors="replace") if self.errors_path.exists() else ""


def _select(
    messages: list[TracedMessage], direction: str, key: str | int | None
) -> list[TracedMessage]:
    chosen = [m for m in messages if m.direction == direction]
    if isinstance(key, int):
        chosen = [m for m in chosen if m.status == key]
    elif key is not None:
        chosen = [m for m in chosen if m.method == key]
    return chosen


# --------------------------------------------------------------------------
# Kamailio


def sip_options(port: int, transport: str = "udp", timeout: float = 0.5) -> str | None:
    """Send OPTIONS sip:127.0.0.1:port; return the response's first line or None."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            s.bind((HOST, 0))
            if kind == socket.SOCK_STREAM:
                s.connect((HOST, port))
            local_port = s.getsockname()[1]
            branch = "z9hG4bK" + uuid.uuid4().hex
            request = (
                f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/{transport.upper()} {HOST}:{local_port};branch={branch};rport\r\n"
                f"From: <sip:probe@{HOST}>;tag={uuid.uuid4().hex[:8]}\r\n"
                f"To: <sip:{HOST}:{port}>\r\n"
                f"Call-ID: {uuid.uuid4().hex}@{HOST}\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            if kind == socket.SOCK_DGRAM:
                s.sendto(request, (HOST, port))
            else:
                s.sendall(request)
            data = s.recv(65536)
        except OSError:
            return None
    first = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return first if first.startswith("SIP/2.0 ") else None


class Kamailio(_Peer):
    """Kamailio as registrar and authenticating proxy on 127.0.0.1:port (UDP + TCP).

    REGISTER is challenged with 401 (realm = ``domain``, qop="auth": the auth
    module's default) and saved in memory (restart forgets it).
    Initial requests are challenged with 407 unless they come from the source
    address (ip:port;transport) of a registered binding of their From user;
    requests for ``domain`` users are looked up in the location table, others
    relayed by their Request-URI (so it also serves as an outbound proxy).
    Dialog-forming requests are record-routed; in-dialog requests follow
    loose routing; CANCEL is relayed statefully; OPTIONS to itself gets 200.
    """

    program = "kamailio"

    def __init__(
        self,
        tmpdir: str | os.PathLike,
        *,
        port: int,
        users: Mapping[str, str] | None = None,
        domain: str = HOST,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(Path(tmpdir) / f"kamailio-{port}")
        self.port = port
        # (certificate, private key): also SIP over TLS on port + 1 (tls.so), with RFC 5923
        # connection aliases accepted (tcp_accept_aliases) so requests go back over the
        # client's connection
        self.tls = tls
        self.tls_port = port + 1 if tls else None
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.domain = domain
        self.cfg_path = self.tmpdir / "kamailio.cfg"
        self.db_dir = self.tmpdir / "db"
        self.run_dir = self.tmpdir / "run"
        self.ctl_socket = self.run_dir / "kamailio_ctl"

    @property
    def uri_host(self) -> str:
        return f"{HOST}:{self.port}"

    def write_config(self) -> None:
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # db_text: every column filled, an empty ha1/ha1b reads as NULL and the
        # whole table fails to load ("null value not allowed")
        rows = ["id(int,auto) username(string) domain(string) password(string) "
                "ha1(string) ha1b(string)"]  # fmt: skip
        for n, (user, password) in enumerate(sorted(self.users.items()), start=1):
            ha1 = _md5(f"{user}:{self.domain}:{password}")
            ha1b = _md5(f"{user}@{self.domain}:{self.domain}:{password}")
            rows.append(f"{n}:{user}:{self.domain}:{password}:{ha1}:{ha1b}")
        (self.db_dir / "subscriber").write_text("\n".join(rows) + "\n")
        (self.db_dir / "version").write_text(
            "id(int,auto) table_name(string) table_version(int)\n1:subscriber:7\n"
        )
        self.cfg_path.write_text(_kamailio_cfg(self))

    def start(self, timeout: float = 10) -> Kamailio:
        require_program("kamailio")
        if self.tls and not list(Path("/usr/lib").glob("*/kamailio/modules/tls.so")):
            raise PeerMissing("kamailio's tls.so (package kamailio-tls-modules)")
        self.write_config()
        argv = [
            require_program("kamailio"),
            "-DD", "-E",  # foreground, log to stderr
            "-f", str(self.cfg_path),
            "-Y", str(self.run_dir),
            "-w", str(self.tmpdir),
            "-m", "64", "-M", "8",
            "-a", "no",
        ]  # fmt: skip
        self._spawn(argv, "kamailio.log")

        def bound() -> bool:
            assert self.pid is not None
            group = _group_members(self.pid)
            tcp = bound_ports(group, "tcp")
            return (self.port in bound_ports(group, "udp") and self.port in tcp
                    and (not self.tls or self.tls_port in tcp))

        def answers() -> bool:
            return bool(sip_options(self.port, "udp", 0.2) and sip_options(self.port, "tcp", 0.2))

        wait_for(bound, timeout, "kamailio to bind", process=self.process, log=self.log)
        wait_for(answers, timeout, "kamailio to answer OPTIONS", process=self.process, log=self.log)
        return self

    def contacts(self, user: str) -> list[str]:
        """Contact URIs registered for ``user`` (needs kamcmd)."""
        result = subprocess.run(
            [require_program("kamcmd"), "-s", f"unix:{self.ctl_socket}",
             "ul.lookup", "location", user],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        if result.returncode != 0:
            return []  # "404 - AOR not found"
        return re.findall(r"^\s*Address:\s*(\S+)", result.stdout, re.MULTILINE)

    def registered(self, user: str) -> bool:
        return bool(self.contacts(user))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _kamailio_cfg(k: Kamailio) -> str:
    # A port-less alias of 127.0.0.1 would make every 127.0.0.1:<port> contact
    # "myself" and loop in-dialog ACKs back here: only a name gets an alias.
    alias = "" if re.fullmatch(r"[\d.]+", k.domain) else f'alias="{k.domain}"\n'
    realm = k.domain
    tls_listen = tls_module = ""
    if k.tls:
        tls_listen = f"enable_tls=yes\ntcp_accept_aliases=yes\nlisten=tls:{HOST}:{k.tls_port}\n"
        tls_module = (f'loadmodule "tls.so"\nmodparam("tls", "certificate", "{k.tls[0]}")\n'
                      f'modparam("tls", "private_key", "{k.tls[1]}")\n'
                      'modparam("tls", "verify_certificate", 0)\n'
                      'modparam("tls", "require_certificate", 0)\n'
                      'modparam("tls", "tls_method", "TLSv1.2+")\n')
    return f"""#!KAMAILIO
# generated by tests/interop/peers.py for one test run
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
dns_try_ipv6=no
dns_try_naptr=no
dns_srv_lb=no
use_dns_cache=off
use_dns_failover=off
tcp_connection_lifetime=3605
listen=udp:{HOST}:{k.port}
listen=tcp:{HOST}:{k.port}
{tls_listen}{alias}server_header="Server: sipgw-test-kamailio"
user_agent_header="User-Agent: sipgw-test-kamailio"

loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "ctl.so"
loadmodule "db_text.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
{tls_module}
modparam("ctl", "binrpc", "unix:{k.ctl_socket}")
modparam("tm", "fr_timer", 5000)
modparam("tm", "fr_inv_timer", 30000)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "use_domain", 0)
modparam("registrar", "received_avp", "$avp(RECEIVED)")
modparam("registrar", "xavp_cfg", "reg")
modparam("registrar", "max_expires", 3600)
modparam("auth_db", "db_url", "text://{k.db_dir}")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "password_column", "ha1")
modparam("auth_db", "use_domain", 0)
modparam("auth_db", "load_credentials", "")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check()) {{
        xlog("L_WARN", "sanity check failed: $rm from $si:$sp\\n");
        exit;
    }}
    xlog("L_INFO", "request $rm $ru from $si:$sp/$pr\\n");

    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}

    # retransmissions of requests already in a transaction
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{
            t_check_trans();
            exit;
        }}
        t_check_trans();
    }}

    if (has_totag()) {{
        if (loose_route()) {{
            route(RELAY);
        }}
        if (is_method("ACK")) {{
            # ACK of a non-2xx reply: absorbed by its transaction
            if (t_check_trans()) {{
                route(RELAY);
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}

    if (is_method("OPTIONS") && uri == myself && $rU == $null) {{
        sl_send_reply("200", "Keepalive");
        exit;
    }}

    if (is_method("REGISTER")) {{
        if (!www_authorize("{realm}", "subscriber")) {{
            www_challenge("{realm}", "0");
            exit;
        }}
        if ($au != $tU) {{
            sl_send_reply("403", "Forbidden auth ID");
            exit;
        }}
        consume_credentials();
        $avp(RECEIVED) = "sip:" + $si + ":" + $sp + ";transport=" + $pr;
        if (!save("location")) {{
            sl_reply_error();
        }}
        xlog("L_INFO", "registered $tU from $si:$sp/$pr\\n");
        exit;
    }}

    # initial requests: challenge unless sent from a registered binding
    $xavp(reg=>match_received) = "sip:" + $si + ":" + $sp + ";transport=" + $pr;
    if (!registered("location", "$fu", 2)) {{
        if (!proxy_authorize("{realm}", "subscriber")) {{
            proxy_challenge("{realm}", "0");
            exit;
        }}
        consume_credentials();
    }}

    remove_hf("Route");
    if (is_method("INVITE|SUBSCRIBE|REFER")) {{
        record_route();
    }}

    if (uri == myself) {{
        if (!lookup("location")) {{
            sl_send_reply("404", "Not Found");
            exit;
        }}
    }}
    route(RELAY);
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"""


# --------------------------------------------------------------------------
# baresip


def make_test_video(path: str | os.PathLike, *, seconds: int = 10) -> Path:
    """Write a 320x240 25 fps H264 baseline video WITHOUT audio (mkv), unless present.

    baresip's avformat module crashes on any audio packet, so the file must
    have no audio track.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    subprocess.run(
        [
            require_program("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=25:duration={seconds}",
            "-an", "-c:v", "libx264", "-profile:v", "baseline", "-level", "3.0",
            "-pix_fmt", "yuv420p", "-g", "250", "-bf", "0", "-tune", "zerolatency",
            str(partial),
        ],
        check=True, timeout=120,
    )  # fmt: skip
    partial.rename(path)
    return path


class Baresip(_Peer):
    """baresip as an auto-answering callee registered at Kamailio.

    Headless (no stdio module, stdin /dev/null); audio from ``ausine`` (no
    audio player module is loaded: there is none that discards); video from
    an H264 file via ``avformat`` and shown on ``fakevideo`` (so it answers
    video sendrecv).  ``registrar_port`` None: no registration (regint=0).
    ``start()`` waits for the 200 OK of its REGISTER.

    baresip 1.0.0 always listens on UDP and TCP ``sip_port`` and on TLS
    ``sip_port + 1``: take both from ``free_port(count=2)``.  Its RTP sockets
    listen on 0.0.0.0 whatever ``net_interface`` says (it still sends only to
    the 127.0.0.1 addresses in the SDP); run the test in a private network
    namespace if a wildcard bind matters.
    """

    program = "baresip"
    terms = 2  # a second SIGTERM ends it when a transaction is still pending
    term_wait = 2.0

    def __init__(
        self,
        tmpdir: str | os.PathLike,
        *,
        user: str = "bob",
        password: str = "bobpw",
        registrar_port: int | None,
        sip_port: int,
        video: bool = True,
        video_file: str | os.PathLike | None = None,
        domain: str = HOST,
        transport: str = "udp",
        mediaenc: str = "",
    ) -> None:
        super().__init__(Path(tmpdir) / f"baresip-{sip_port}")
        self.mediaenc = mediaenc  # e.g. "srtp-mand": SDES SRTP required (srtp.so)
        self.user = user
        self.password = password
        self.registrar_port = registrar_port
        self.sip_port = sip_port
        self.video = video
        self.video_file = Path(video_file) if video_file is not None else None
        self.domain = domain
        self.transport = transport
        self.config_dir = self.tmpdir / "config"

    @property
    def aor(self) -> str:
        """The address of record, e.g. sip:bob@127.0.0.1:5060 (Kamailio's port)."""
        if self.registrar_port is None:
            return f"sip:{self.user}@{HOST}:{self.sip_port}"
        return f"sip:{self.user}@{self.domain}:{self.registrar_port}"

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        modules = ["g711.so", "opus.so", "ausine.so"] + (["srtp.so"] if self.mediaenc else [])
        mediaenc = f";mediaenc={self.mediaenc}" if self.mediaenc else ""
        video_lines = ""
        if self.video:
            if self.video_file is None:
                self.video_file = make_test_video(self.tmpdir / "video.mkv")
            modules += ["avcodec.so", "avformat.so", "fakevideo.so"]
            video_lines = (
                f"video_source\t\tavformat,{self.video_file}\n"
                "video_display\t\tfakevideo,nil\n"
                "video_size\t\t320x240\n"
                "video_bitrate\t\t500000\n"
                "video_fps\t\t25\n"
            )
        module_lines = "".join(f"module\t\t\t{m}\n" for m in modules)
        (self.config_dir / "config").write_text(
            "# generated by tests/interop/peers.py\n"
            "poll_method\t\tepoll\n"
            f"sip_listen\t\t{HOST}:{self.sip_port}\n"
            f"net_interface\t\t{HOST}\n"
            "dns_server\t\t127.0.0.1:53\n"
            "call_local_timeout\t120\n"
            "call_max_calls\t\t4\n"
            "audio_source\t\tausine,440\n"
            "ausrc_srate\t\t48000\n"
            "ausrc_channels\t\t2\n"
            f"{video_lines}"
            "rtp_ports\t\t20000-40000\n"
            "module_path\t\t/usr/lib/baresip/modules\n"
            f"{module_lines}"
            "module_app\t\taccount.so\n"
            "module_app\t\tmenu.so\n"
        )
        if self.registrar_port is None:
            account = f"<{self.aor}>;answermode=auto;regint=0{mediaenc}\n"
        else:
            account = (
                f"<{self.aor};transport={self.transport}>;auth_pass={self.password};"
                f"answermode=auto;regint=300{mediaenc};"
                f'outbound="sip:{HOST}:{self.registrar_port};transport={self.transport}"\n'
            )
        (self.config_dir / "accounts").write_text(account)
        (self.config_dir / "contacts").write_text("")

    def start(self, timeout: float = 15) -> Baresip:
        require_program("baresip")
        stdbuf = require_program("stdbuf")
        self.write_config()
        # line-buffered stdout, else the ready lines never show in the log
        argv = [stdbuf, "-oL", require_program("baresip"), "-f", str(self.config_dir)]
        self._spawn(argv, "baresip.log")
        if self.registrar_port is None:
            marker = re.compile(r"baresip is ready")
            what = "baresip to get ready"
        else:
            marker = re.compile(r"\b200 OK\b.*\[\d+ binding")
            what = f"baresip to register {self.user} at 127.0.0.1:{self.registrar_port}"
        wait_for(
            lambda: marker.search(self.log()), timeout, what, process=self.process, log=self.log
        )
        return self


# --------------------------------------------------------------------------
# nginx-rtmp

NGINX_RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


class NginxRtmp(_Peer):
    """nginx with the RTMP module, application ``live`` on 127.0.0.1:``port``.

    Its own prefix, conf, pid and logs in ``tmpdir``; in the foreground (``daemon
    off``).  With ``record`` every published stream is also written as
    ``record_dir/NAME.flv``.  Started as root, nginx's workers would run as ``nobody``,
    who cannot enter pytest's 0700 temp folders: they run as root here (``user root``).
    ``restart()`` stops it and starts it again on the same port (to test reconnecting
    clients).
    """

    program = "nginx"
    term_wait = 5.0

    def __init__(self, tmpdir: str | os.PathLike, *, port: int, record: bool = False,
                 stat_port: int | None = None) -> None:
        super().__init__(Path(tmpdir) / f"nginx-{port}")
        self.port = port
        self.record = record
        self.stat_port = stat_port  # HTTP: /stat is the RTMP module's XML statistics
        self.record_dir = self.tmpdir / "records"
        self.conf_path = self.tmpdir / "nginx.conf"

    def url(self, name: str = "") -> str:
        base = f"rtmp://{HOST}:{self.port}/live"
        return f"{base}/{name}" if name else base

    def write_config(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        record = "record off;"
        if self.record:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            record = f"record all; record_path {self.record_dir}; record_unique off;"
        self.conf_path.write_text(
            "# generated by tests/interop/peers.py\n"
            f"load_module {NGINX_RTMP_MODULE};\n"
            "daemon off;\n"
            f"{'user root;' if os.geteuid() == 0 else ''}\n"
            "worker_processes 1;\n"
            f"pid {self.tmpdir}/nginx.pid;\n"
            f"error_log {self.tmpdir}/error.log info;\n"
            "events { worker_connections 64; }\n"
            + (f"http {{ access_log off; server {{ listen {HOST}:{self.stat_port}; "
               "location /stat { rtmp_stat all; } } }\n" if self.stat_port else "")
            + "rtmp {\n"
            "    server {\n"
            f"        listen {HOST}:{self.port};\n"
            "        chunk_size 4096;\n"
            "        application live {\n"
            "            live on;\n"
            f"            {record}\n"
            "        }\n"
            "    }\n"
            "}\n"
        )

    def _listening(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex((HOST, self.port)) == 0

    def start(self, timeout: float = 10) -> NginxRtmp:
        nginx = require_program("nginx")
        if not Path(NGINX_RTMP_MODULE).exists():
            raise PeerMissing(f"the nginx RTMP module is not installed: {INSTALL_HINT}")
        self.write_config()
        self._spawn([nginx, "-p", str(self.tmpdir), "-c", str(self.conf_path),
                     "-e", str(self.tmpdir / "error.log")], "nginx.log")
        wait_for(self._listening, timeout, f"nginx-rtmp to listen on {HOST}:{self.port}",
                 process=self.process, log=self.error_log)
        return self

    def stat(self) -> str:
        """The /stat page (XML) of a server started with ``stat_port``."""
        import urllib.request
        with urllib.request.urlopen(f"http://{HOST}:{self.stat_port}/stat", timeout=5) as page:
            return page.read().decode()

    def error_log(self) -> str:
        path = self.tmpdir / "error.log"
        return self.log() + (path.read_text(errors="replace") if path.exists() else "")

    def restart(self, down_for: float = 0.0, timeout: float = 10) -> NginxRtmp:
        """Stop (the server drops every connection), wait ``down_for`` s, start again."""
        self.stop()
        self.process = None
        time.sleep(down_for)
        return self.start(timeout)


# --------------------------------------------------------------------------
# dnsmasq: a local DNS server for RFC 3263 (NAPTR, SRV, A, AAAA)


class Dnsmasq(_Peer):
    """dnsmasq answering from its own records only, on 127.0.0.1:``port`` (UDP and TCP).

    ``records`` are dnsmasq options without the dashes, e.g.
    ``"srv-host=_sip._udp.sip.test,live.sip.test,5060,10,0"``, ``"naptr-record=..."``,
    ``"host-record=live.sip.test,127.0.0.1"``. ``domain`` is answered locally (NXDOMAIN for
    what is not listed); nothing is forwarded, no hosts file or resolv.conf is read, and
    every query is logged (``queries()``).
    """

    program = "dnsmasq"

    def __init__(self, tmpdir: str | os.PathLike, *, port: int, domain: str,
                 records: Iterable[str]) -> None:
        super().__init__(Path(tmpdir) / f"dnsmasq-{port}")
        self.port = port
        self.domain = domain
        self.records = list(records)

    def command(self) -> list[str]:
        argv = [require_program("dnsmasq"), "--keep-in-foreground", "--conf-file=/dev/null",
                f"--port={self.port}", f"--listen-address={HOST}", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--no-poll", "--no-negcache",
                f"--local=/{self.domain}/", f"--pid-file={self.tmpdir}/dnsmasq.pid",
                "--log-queries", "--log-facility=-"]
        if os.geteuid() == 0:
            argv.append("--user=root")  # stays able to write its log in pytest's 0700 tmp
        return argv + [f"--{record}" for record in self.records]

    def start(self, timeout: float = 10) -> Dnsmasq:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self._spawn(self.command(), "dnsmasq.log")

        def ready() -> bool:
            assert self.pid is not None
            return self.port in bound_ports([self.pid], "udp")

        wait_for(ready, timeout, f"dnsmasq to bind {HOST}:{self.port}", process=self.process,
                 log=self.log)
        return self

    def queries(self) -> list[tuple[str, str]]:
        """(type, name) of every query it received, in order."""
        return re.findall(r"query\[(\w+)\] (\S+) from", self.log())


# --------------------------------------------------------------------------
# headless Chromium and static pages (browser tests)

WEBSDK_VERSION = "2.0.276"
HLSJS_VERSION = "1.7.4"  # tools/install-test-deps.sh installs the same
#: where tools/install-test-deps.sh puts the npm packages the browser tests serve
NPM_PREFIX = Path(__file__).resolve().parents[2] / "var" / "npm"

#: PEERS.md: what worked as root, loopback ICE on, autoplay without a click, nothing phoning home
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-first-run",
    "--no-default-browser-check", "--metrics-recording-only", "--mute-audio",
    "--password-store=basic", "--use-mock-keychain",
    "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows", "--window-size=1024,768",
    # host candidates as plain 127.0.0.1: mDNS names need multicast, which lo lacks
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)  # fmt: skip

#: Runs before any page script: keeps every RTCPeerConnection a page makes in
#: ``window.__peerConnections`` (the WebSDK keeps its own out of reach), page files unchanged.
RECORD_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || Native.__recorded) return;
  window.__peerConnections = [];
  class Recorded extends Native {
    constructor(...args) { super(...args); window.__peerConnections.push(this); }
  }
  Recorded.__recorded = true;
  window.RTCPeerConnection = Recorded;
  window.webkitRTCPeerConnection = Recorded;
})();
"""

#: The inbound-rtp counters of every open recorded peer connection: [{video: {...}, audio: {...}}]
INBOUND_STATS = """
const wanted = ["framesDecoded", "packetsReceived", "frameWidth", "frameHeight", "bytesReceived"];
const out = [];
for (const pc of (window.__peerConnections || [])) {
  if (pc.connectionState === "closed" || pc.signalingState === "closed") continue;
  const row = {state: pc.connectionState};
  (await pc.getStats()).forEach(report => {
    if (report.type !== "inbound-rtp") return;
    const kind = report.kind || report.mediaType;
    row[kind] = {};
    for (const key of wanted) if (key in report) row[kind][key] = report[key];
  });
  out.push(row);
}
return out;
"""


def websdk_dir(install: bool = True) -> Path:
    """The installed ``@flashphoner/websdk`` package; ``npm install`` it when absent.

    The browser tests run in a network namespace without the registry: there a
    missing package is a PeerMissing with the install hint (tools/test.sh installs it).
    """
    override = os.environ.get("SIPGW_WEBSDK_DIR")
    package = NPM_PREFIX / "node_modules" / "@flashphoner" / "websdk"
    if override:
        package = Path(override)
    if (package / "flashphoner.js").exists():
        return package
    if install and not override and shutil.which("npm"):
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund",
             "--fetch-retries=0",
             f"@flashphoner/websdk@{WEBSDK_VERSION}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=60, check=False,
        )  # fmt: skip
        if (package / "flashphoner.js").exists():
            return package
    raise PeerMissing(f"@flashphoner/websdk@{WEBSDK_VERSION} is not installed in {package}: "
                      f"{INSTALL_HINT}")


def hlsjs_dir() -> Path:
    """The installed ``hls.js`` package's ``dist`` folder (tools/install-test-deps.sh)."""
    dist = NPM_PREFIX / "node_modules" / "hls.js" / "dist"
    if (dist / "hls.min.js").exists():
        return dist
    raise PeerMissing(f"hls.js@{HLSJS_VERSION} is not installed in {dist}: {INSTALL_HINT}")


class StaticSite:
    """Files of ``root`` over HTTP on 127.0.0.1 (or ``host``), unchanged, from a thread of the
    test process; over HTTPS with ``tls=(certificate, key)`` (PEM files)."""

    def __init__(self, root: str | os.PathLike, host: str = HOST, tls=None) -> None:
        self.root = Path(root)
        self.host = host
        self.tls = tls
        self.port: int | None = None
        self._server = None
        self._thread = None

    def start(self) -> StaticSite:
        import functools
        import http.server
        import threading

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(self.root))
        self._server = http.server.ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="static-site",
                                        daemon=True)
        self._thread.start()
        return self

    def url(self, path: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None


class VethNamespace:
    """A second network namespace joined to the test's by a veth pair: ``near`` (here) and
    ``far`` (there), a /30 of the test's own making, loopback up on both sides.

    A process holds the namespace (``unshare -n sleep``); programs enter it with
    ``nsenter --net=/proc/<pid>/ns/net`` (``wrapper``).  ``stop()`` deletes the pair and ends
    the holder, which frees the namespace: nothing stays behind.  Works as root, inside the
    ``unshare -n`` tools/test.sh runs the tests in too (no named netns, no mount needed).
    """

    def __init__(self, near: str = "10.77.0.1", far: str = "10.77.0.2", prefix: int = 30) -> None:
        self.near, self.far, self.prefix = near, far, prefix
        suffix = f"{os.getpid() % 100000}"
        self.near_dev, self.far_dev = f"sgva{suffix}", f"sgvb{suffix}"
        self.holder: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.holder.pid if self.holder is not None else None

    def _ip(self, *args: str, inside: bool = False) -> None:
        argv = ["ip", *args]
        if inside:
            argv = ["nsenter", f"--net=/proc/{self.pid}/ns/net", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise PeerError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def start(self) -> "VethNamespace":
        for program in ("unshare", "nsenter", "ip"):
            require_program(program)
        self.holder = subprocess.Popen(["unshare", "-n", "--", "sleep", "3600"],
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        _started_groups.add(self.holder.pid)
        here = os.readlink("/proc/self/ns/net")
        try:
            wait_for(lambda: os.readlink(f"/proc/{self.pid}/ns/net") != here, timeout=5,
                     what="the namespace holder to unshare")
            self._ip("link", "add", self.near_dev, "type", "veth", "peer", "name", self.far_dev,
                     "netns", str(self.pid))
            self._ip("addr", "add", f"{self.near}/{self.prefix}", "dev", self.near_dev)
            self._ip("link", "set", self.near_dev, "up")
            self._ip("link", "set", "lo", "up", inside=True)
            self._ip("addr", "add", f"{self.far}/{self.prefix}", "dev", self.far_dev, inside=True)
            self._ip("link", "set", self.far_dev, "up", inside=True)
        except Exception:
            self.stop()
            raise
        return self

    def wrapper(self, program: str, directory: Path) -> Path:
        """An executable that runs ``program`` (with its arguments) in the namespace."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{Path(program).name}-in-netns"
        path.write_text(f'#!/bin/sh\nexec nsenter --net=/proc/{self.pid}/ns/net {program} "$@"\n')
        path.chmod(0o755)
        return path

    def stop(self) -> None:
        subprocess.run(["ip", "link", "del", self.near_dev], capture_output=True, timeout=10)
        if self.holder is not None:
            if self.holder.poll() is None:
                self.holder.kill()
            self.holder.wait(5)
            self.holder = None


class Chromium:
    """Debian's headless Chromium driven by selenium through /usr/bin/chromedriver.

    chromedriver runs in a process group of its own (Chromium and its helpers
    inherit it); ``stop()`` quits the browser and then kills that group, so no
    browser process outlives the test.  Every window opened with ``open()``
    records its RTCPeerConnections (``RECORD_PEER_CONNECTIONS``) for ``stats()``.
    """

    program = "chromium"

    def __init__(self, tmpdir: str | os.PathLike, *, flags: Sequence[str] = CHROMIUM_FLAGS,
                 netns: "VethNamespace | None" = None) -> None:
        self.tmpdir = Path(tmpdir) / "chromium"
        self.flags = tuple(flags)
        self.netns = netns  # run the browser (not chromedriver) in that network namespace
        self.driver = None
        self.service = None
        self.log_path = self.tmpdir / "chromedriver.log"

    @property
    def pid(self) -> int | None:
        """chromedriver's pid, which is also the process group of the browser."""
        return self.service.process.pid if self.service and self.service.process else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Chromium:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        binary = require_program("chromium")
        driver_path = require_program("chromedriver")
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        if self.netns is not None:
            # chromedriver stays here and drives the browser over a pipe, not over TCP
            # (the browser's loopback is another one)
            options.binary_location = str(self.netns.wrapper(binary, self.tmpdir))
            options.add_argument("--remote-debugging-pipe")
        for flag in self.flags:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.tmpdir / 'profile'}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.service = Service(
            driver_path, port=free_port("tcp"), log_output=str(self.log_path),
            service_args=["--verbose"], popen_kw={"start_new_session": True},
            env={**os.environ, "SE_OFFLINE": "true"},
        )  # fmt: skip
        try:
            self.driver = webdriver.Chrome(service=self.service, options=options)
        except Exception:
            self.stop()
            raise
        finally:
            if self.pid is not None:
                _started_groups.add(self.pid)
        self.driver.set_script_timeout(20)
        self.driver.set_page_load_timeout(20)
        self._first_window_used = False
        return self

    def open(self, url: str) -> str:
        """Load ``url`` in the first window, then each time in a new one; return its handle."""
        if self._first_window_used:
            self.driver.switch_to.new_window("window")
        self._first_window_used = True
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                    {"source": RECORD_PEER_CONNECTIONS})
        self.driver.get(url)
        return self.driver.current_window_handle

    def wait(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``condition`` (page state read through the driver) until it is true; on
        timeout fail with the browser console in the message."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                result = condition()
            except Exception as exc:  # a page between loads, an element not yet made
                result, last = None, exc
            if result:
                return result
            if time.monotonic() > deadline:
                raise PeerError(f"{what}: not within {timeout:g} s (last error: {last})\n"
                                f"--- browser console ---\n{self.console()[-3000:]}")
            time.sleep(0.1)

    def text(self, element_id: str) -> str:
        """The text an element shows (textContent: a hidden element counts too)."""
        return self.driver.execute_script(
            "const e = document.getElementById(arguments[0]);"
            "return e ? e.textContent.trim() : null;",
            element_id)

    def wait_text(self, element_id: str, *texts: str, timeout: float = 20) -> str:
        """Wait until element ``element_id`` shows one of ``texts``; return it."""
        try:
            return self.wait(lambda: (t := self.text(element_id)) in texts and t, timeout,
                             f"#{element_id} to show {' or '.join(texts)}")
        except PeerError as error:
            raise PeerError(f"{error} (it shows {self.text(element_id)!r})") from None

    def video_size(self, selector: str = "video") -> tuple[int, int]:
        """videoWidth x videoHeight of the first element matching ``selector``."""
        size = self.driver.execute_script(
            "const v = document.querySelector(arguments[0]);"
            "return v ? [v.videoWidth, v.videoHeight] : [0, 0];", selector)
        return tuple(size)

    def wait_media_flowing(self, timeout: float = 20, frames: int = 10, packets: int = 10) -> list:
        """Wait until every open peer connection of the current window decodes ``frames``
        more video frames and receives ``packets`` more audio packets; return the last stats."""
        def counters(rows):
            return [(r.get("video", {}).get("framesDecoded", 0),
                     r.get("audio", {}).get("packetsReceived", 0)) for r in rows]
        first = self.wait(self.stats, timeout, "a peer connection in the page")
        base = counters(first)

        def advanced():
            rows = self.stats()
            now = counters(rows)
            ok = len(now) == len(base) and all(
                v - v0 >= frames and a - a0 >= packets for (v, a), (v0, a0) in zip(now, base))
            return rows if ok else None
        return self.wait(advanced, timeout, f"{frames} video frames decoded and {packets} audio "
                                            f"packets received (from {base})")

    def stats(self, handle: str | None = None) -> list[dict]:
        """inbound-rtp counters of the open peer connections of a window (the current one)."""
        if handle is not None:
            self.driver.switch_to.window(handle)
        return self.driver.execute_script(f"return (async () => {{ {INBOUND_STATS} }})();")

    def console(self) -> str:
        """The browser console so far, one line per entry (for failure messages)."""
        try:
            return "\n".join(e["message"] for e in self.driver.get_log("browser"))
        except Exception as exc:  # the browser may be gone
            return f"(no console: {exc})"

    def processes(self) -> list[int]:
        """Live processes of this browser, in its group or not (chrome_crashpad_handler
        calls setsid): every one that names this browser's scratch dir on its command line."""
        marker = str(self.tmpdir).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if marker in cmdline and stat[stat.rindex(")") + 2] != "Z":
                found.append(int(entry))
        return found

    def stop(self) -> None:
        """Quit the browser, stop chromedriver, then SIGKILL whatever of it is left."""
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:
                pass
            self.driver = None
        if self.service is not None:
            pid = self.pid
            try:
                self.service.stop()
            except Exception:
                pass
            if pid is not None and _group_members(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.service = None
        deadline = time.monotonic() + 3
        while self.processes() and time.monotonic() < deadline:
            time.sleep(_POLL_S)  # crashpad leaves once the browser is gone
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------
# Redis (the shared state of several sipgw nodes)

class Redis(_Peer):
    """redis-server on 127.0.0.1:``port``, in the foreground, nothing saved to disk; its
    working directory is ``tmpdir``."""

    program = "redis-server"

    def __init__(self, tmpdir: str | os.PathLike, *, port: int) -> None:
        super().__init__(Path(tmpdir) / f"redis-{port}")
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self, *words: str) -> str:
        """One command in the inline protocol; the first line of the reply."""
        with socket.create_connection((HOST, self.port), timeout=2) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.makefile("rb").readline().decode().rstrip("\r\n")

    def start(self, timeout: float = 10) -> "Redis":
        server = require_program("redis-server")
        self._spawn([server, "--port", str(self.port), "--bind", HOST, "--save", "",
                     "--appendonly", "no", "--dir", str(self.tmpdir), "--daemonize", "no",
                     "--protected-mode", "yes"], "redis.log")

        def pong() -> bool:
            try:
                return self.command("PING") == "+PONG"
            except OSError:
                return False
        wait_for(pong, timeout, "redis-server answering PING", process=self.process,
                 log=self.log)
        return self
