"""The daemon's fast log text is the text twistd's own observer writes."""
from __future__ import annotations

import io
import time

import pytest
from twisted.logger import (FilteringLogObserver, Logger, LogLevel, LogPublisher,
                            formatEventAsClassicLogText, formatTime, textFileLogObserver,
                            timeFormatRFC3339)
from twisted.python import failure, log as legacy

from sipgw.logtext import ClassicText, speed_up_text_observers


class Thing:
    name = "thing"

    def __repr__(self):
        return "<Thing>"


def _events():
    """Events as Logger, the legacy log and odd callers make them."""
    collected = []
    publisher = LogPublisher(collected.append)
    logger = Logger(namespace="sipgw.test", observer=publisher)
    logger.info("call {call_id} {status}{reason}", call_id="c1", status="FINISH",
                reason=" (Normal call clearing)")
    logger.warn("thing {t!r} {t.name} {n:>5} {d[k]}", t=Thing(), n=42, d={"k": "v"})
    logger.info("a call {f()} here", f=lambda: "made")
    logger.info("missing {nothing}")
    logger.info("two\nlines {x}", x="and\nthree")
    logger.info("")
    logger.debug("{{braces}} {x}", x="é ünïcode")
    logger.info("bad {x:d}", x="not a number")
    try:
        1 / 0
    except ZeroDivisionError:
        logger.failure("it failed {x}", failure.Failure(), x=1)
    collected.append({"log_format": "system {x}", "x": 1, "log_system": "custom-system",
                      "log_time": time.time(), "log_level": LogLevel.info})
    collected.append({"log_format": "no time {x}", "x": 2, "log_time": None})
    collected.append({"log_format": b"bytes {x}", "x": 3, "log_time": time.time()})
    collected.append({"log_format": "old {x}", "x": 4, "log_time": 86400.999,
                      "log_namespace": "ns"})
    collected.append({"log_format": "negative {x}", "x": 5, "log_time": -3.5})
    legacy_events = []
    legacy.addObserver(legacy_events.append)
    try:
        legacy.msg("legacy %s", "message")
        legacy.msg(format="legacy format %(a)s", a=1)
    finally:
        legacy.removeObserver(legacy_events.append)
    from twisted.logger._legacy import publishToNewObserver
    for event in legacy_events:
        publishToNewObserver(collected.append, dict(event), lambda e: "text")
    return collected


@pytest.mark.parametrize("time_format", [timeFormatRFC3339, None, "%Y/%W", "%H:%M:%S.%f"])
def test_every_event_reads_as_twistd_writes_it(time_format):
    """Same text as formatEventAsClassicLogText for plain, odd, failed and legacy events."""
    fast = ClassicText(time_format)
    for event in _events():
        slow = formatEventAsClassicLogText(event, formatTime=lambda w: formatTime(w, time_format))
        assert fast(event) == slow, event


def test_the_time_stamp_changes_with_the_second():
    """One stamp per second, recomputed when the second changes."""
    fast = ClassicText()
    base = 1_700_000_000.25
    for when in (base, base + 0.5, base + 1.0, base + 1.7, base - 10):
        event = {"log_format": "x", "log_time": when, "log_namespace": "n",
                 "log_level": LogLevel.info}
        assert fast(event) == formatEventAsClassicLogText(event)


def test_twistd_text_observers_get_the_fast_formatter_and_others_are_left():
    """A textFileLogObserver (bare or filtered) is changed; another observer is not."""
    out = io.StringIO()
    bare, inner = textFileLogObserver(out), textFileLogObserver(io.StringIO(), timeFormat=None)
    other = []
    observers = [bare, FilteringLogObserver(inner, []), other.append]
    assert speed_up_text_observers(observers) == 2
    assert isinstance(bare.formatEvent, ClassicText) and bare.formatEvent.time_format == timeFormatRFC3339
    assert inner.formatEvent.time_format is None
    Logger(namespace="n", observer=bare).info("hello {who}", who="you")
    assert out.getvalue().endswith(" [n#info] hello you\n")


def test_lean_logger_emits_what_twisteds_logger_emits():
    """sipgw.logtext.Logger gives observers the same event as twisted.logger.Logger (only the
    time stamp and the logger object differ), and reports a bad level as Twisted does."""
    from twisted.logger import LogLevel
    from twisted.logger import Logger as TwistedLogger

    from sipgw.logtext import Logger

    ours, theirs = [], []
    Logger(namespace="sipgw.x", observer=ours.append).info("call {a} {b}", a=1, b="x")
    TwistedLogger(namespace="sipgw.x", observer=theirs.append).info("call {a} {b}", a=1, b="x")
    strip = lambda e: {k: v for k, v in e.items() if k not in ("log_time", "log_logger")}  # noqa: E731
    assert strip(ours[0]) == strip(theirs[0])
    assert ours[0]["log_level"] is LogLevel.info and isinstance(ours[0]["log_time"], float)
    Logger(namespace="sipgw.x", observer=ours.append).emit("loud", "nope")
    assert ours[-1]["log_level"] is LogLevel.critical and "invalid log level" in ours[-1]["log_format"]


class _Turns:
    """A reactor's call_soon and shutdown triggers, run when the test says."""

    def __init__(self):
        self.soon, self.triggers = [], []

    def callLater(self, delay, f):
        assert delay == 0
        self.soon.append(f)

    def addSystemEventTrigger(self, phase, event, f):
        self.triggers.append((phase, event, f))

    def end_turn(self):
        soon, self.soon = self.soon, []
        for f in soon:
            f()


class _CountingFile(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def _turn_writer():
    from sipgw.logtext import TurnWriter

    out, turns = _CountingFile(), _Turns()
    observers = [FilteringLogObserver(textFileLogObserver(out, timeFormat=None), [])]
    assert speed_up_text_observers(observers, turns) == 1
    writer = observers[0]._observer
    assert isinstance(writer, TurnWriter) and isinstance(writer.format_event, ClassicText)
    return out, turns, observers, Logger(namespace="n", observer=observers[0])


def test_the_lines_of_one_turn_go_out_in_one_write_in_order():
    out, turns, _, log = _turn_writer()
    for i in range(5):
        log.info("call {i}", i=i)
    assert out.getvalue() == "" and len(turns.soon) == 1  # one flush asked for the turn
    turns.end_turn()
    assert out.writes == 1
    assert out.getvalue() == "".join(f"- [n#info] call {i}\n" for i in range(5))
    log.info("next turn")
    turns.end_turn()
    assert out.writes == 2 and out.getvalue().endswith("- [n#info] next turn\n")


def test_warnings_failures_and_other_threads_write_at_once_after_what_was_held():
    import threading

    out, turns, _, log = _turn_writer()
    log.info("held")
    log.warn("warned")
    assert out.getvalue() == "- [n#info] held\n- [n#warn] warned\n"
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("failed")
    assert "ZeroDivisionError" in out.getvalue()
    log.info("held again")
    thread = threading.Thread(target=lambda: log.info("from a thread"))
    thread.start()
    thread.join()
    assert out.getvalue().endswith("- [n#info] held again\n- [n#info] from a thread\n")
    turns.end_turn()  # the flush asked for earlier finds nothing left
    assert out.getvalue().count("held again") == 1


def test_held_lines_are_bounded():
    from sipgw.logtext import MAX_HELD_LINES

    out, turns, _, log = _turn_writer()
    for i in range(MAX_HELD_LINES + 1):
        log.info("line {i}", i=i)
    assert out.writes == 1 and out.getvalue().count("\n") == MAX_HELD_LINES


def test_shutdown_flushes_and_puts_twistds_observer_back():
    out, turns, observers, log = _turn_writer()
    log.info("last words")
    [(phase, event, restore)] = turns.triggers
    assert (phase, event) == ("after", "shutdown")
    restore()
    assert out.getvalue() == "- [n#info] last words\n"
    assert type(observers[0]._observer).__name__ == "FileLogObserver"
    log.info("after the reactor")  # written at once again
    assert out.getvalue().endswith("- [n#info] after the reactor\n")


def test_a_bytes_file_gets_utf8():
    from sipgw.logtext import TurnWriter

    out, soon = io.BytesIO(), []
    writer = TurnWriter(out, ClassicText(None), soon.append)
    Logger(namespace="n", observer=writer).info("é {x}", x="ü")
    soon.pop()()
    assert out.getvalue() == "- [n#info] é ü\n".encode()
