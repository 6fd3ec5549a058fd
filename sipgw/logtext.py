"""The daemon's log lines, written as twistd writes them but formatted for less CPU.

twistd's text log observer formats every event through ``string.Formatter`` with a mapping
that allows ``{f()}`` calls, and every time stamp through a time zone lookup and
``strftime``: about a fifth of the CPU of a call set up at hundreds of calls a second
(six lines per call). ``classic_text`` gives the same text: ``str.format_map`` for the
plain formats the code uses (any other event, or any error, goes through Twisted's own
formatter), and one formatted time stamp per second.
"""
from __future__ import annotations

import atexit
import threading
from time import time

from twisted.logger import (FileLogObserver, FilteringLogObserver, LogLevel,
                            formatEventAsClassicLogText, formatTime, timeFormatRFC3339)
from twisted.logger import Logger as _TwistedLogger
from twisted.python.compat import ioType

_LEVELS = frozenset(LogLevel.iterconstants())


class Logger(_TwistedLogger):
    """``twisted.logger.Logger`` for the lines written for every call: the same event to the
    same observer, but its level is checked against a set (Twisted's ``emit`` sorts the five
    levels into a new list for every event: a fifth of what an event costs before the
    observers)."""

    def emit(self, level, format=None, **kwargs) -> None:  # noqa: A002 - Twisted's name
        if level not in _LEVELS:  # Twisted's own emit reports the bad level
            return super().emit(level, format, **kwargs)
        kwargs.update(log_logger=self, log_level=level, log_namespace=self.namespace,
                      log_source=self.source, log_format=format, log_time=time())
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))
        self.observer(kwargs)


class ClassicText:
    """``formatEventAsClassicLogText(event, formatTime=...)`` with ``time_format``, faster."""

    def __init__(self, time_format: str | None = timeFormatRFC3339) -> None:
        self.time_format = time_format
        self._second: int | None = None
        self._stamp = ""

    def _slow(self, event) -> str | None:
        return formatEventAsClassicLogText(
            event, formatTime=lambda when: formatTime(when, self.time_format))

    def __call__(self, event) -> str | None:
        text = event.get("log_format")
        if (type(text) is not str or "log_failure" in event or "log_flattened" in event
                or "()" in text):
            return self._slow(event)
        try:
            text = text.format_map(event)
        except Exception:  # noqa: BLE001 - Twisted's formatter says what is wrong
            return self._slow(event)
        if not text:
            return None
        when = event.get("log_time")
        if when is None or self.time_format is None:
            stamp = "-"
        elif when < 0 or "%f" in self.time_format:  # not one text per whole second
            stamp = formatTime(when, self.time_format)
        else:
            second = int(when)
            if second != self._second:
                self._stamp = formatTime(second, self.time_format)
                self._second = second
            stamp = self._stamp
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        else:
            try:
                system = str(system)
            except Exception:  # noqa: BLE001 - as Twisted's _formatSystem
                system = "UNFORMATTABLE"
        return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"


_AT_ONCE = frozenset((LogLevel.warn, LogLevel.error, LogLevel.critical))
MAX_HELD_LINES = 256


class TurnWriter:
    """``FileLogObserver(out, format)`` that writes the lines of one reactor turn together.

    twistd's observer writes and flushes every line: one ``write`` system call each, six a
    call at call setup. Here a line logged on the reactor's thread is held until the turn
    ends (the reactor runs ``flush`` as soon as the callbacks ready now have run: the next
    poll waits for nothing while it is due), then every held line goes out in one write. A
    warning, an error, a failure, a line from another thread, the ``MAX_HELD_LINES``-th held
    line and the reactor's shutdown write at once, after whatever was held, in order."""

    def __init__(self, out, format_event, call_soon, thread_id: int | None = None) -> None:
        self._out = out
        self._bytes = ioType(out) is not str  # as FileLogObserver decides
        self.format_event = format_event
        self._call_soon = call_soon
        self._thread = thread_id if thread_id is not None else threading.get_ident()
        self._held: list[str] = []
        self._due = False
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        text = self.format_event(event)
        if not text:
            return
        with self._lock:
            self._held.append(text)
            if (event.get("log_level") in _AT_ONCE or "log_failure" in event
                    or len(self._held) >= MAX_HELD_LINES or threading.get_ident() != self._thread):
                self._write()
            elif not self._due:
                try:
                    self._call_soon(self.flush)
                    self._due = True
                except RuntimeError:  # the loop is closed: nothing will come back for it
                    self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        self._due = False
        if not self._held:
            return
        text = "".join(self._held)
        self._held.clear()
        self._out.write(text.encode("utf-8") if self._bytes else text)
        self._out.flush()


def _text_observers(observers: list):
    """(holder, index or attribute, observer) of each twistd text file observer in
    ``observers``, as it is or inside FilteringLogObservers."""
    for i, observer in enumerate(observers):
        holder, slot = observers, i
        while isinstance(observer, FilteringLogObserver):
            holder, slot, observer = observer, "_observer", observer._observer
        if isinstance(observer, FileLogObserver):
            fmt = observer.formatEvent
            if getattr(fmt, "__qualname__", "") == "textFileLogObserver.<locals>.formatEvent":
                cells = dict(zip(fmt.__code__.co_freevars, fmt.__closure__ or ()))
                if "timeFormat" in cells:
                    yield holder, slot, observer, cells["timeFormat"].cell_contents


def speed_up_text_observers(observers: list, reactor=None) -> int:
    """Give every twistd text file observer in ``observers`` (as they are, or inside a
    FilteringLogObserver) the faster formatter, and with ``reactor`` a ``TurnWriter`` in its
    place (back to the original, flushed, at the reactor's shutdown); returns how many were
    changed."""
    changed = 0
    for holder, slot, observer, time_format in list(_text_observers(observers)):
        fast = ClassicText(time_format)
        if reactor is None:
            observer.formatEvent = fast
        else:
            loop = getattr(reactor, "_asyncioEventloop", None)
            call_soon = loop.call_soon if loop is not None else (lambda f: reactor.callLater(0, f))
            writer = TurnWriter(observer._outFile, fast, call_soon)
            observer.formatEvent = fast
            _put(holder, slot, writer)

            def restore(holder=holder, slot=slot, writer=writer, observer=observer):
                _put(holder, slot, observer)
                writer.flush()
            reactor.addSystemEventTrigger("after", "shutdown", restore)
            atexit.register(writer.flush)  # a daemon that exits without a shutdown
        changed += 1
    return changed


def _put(holder, slot, observer) -> None:
    if isinstance(slot, int):
        holder[slot] = observer
    else:
        setattr(holder, slot, observer)
