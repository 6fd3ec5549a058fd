"""Timers of a few fixed delays, one reactor timer per delay.

SIP's timers come in a handful of fixed lengths (RFC 3261 §17: T1 and its doublings, 64*T1,
T4; a configured ring timeout), and most of them are cancelled: a call arms Timer A, Timer B,
the ring timeout and its BYE's Timer J, and cancels all but the last. Each as its own
``reactor.callLater`` is a ``DelayedCall`` pushed on the reactor's heap (log n comparisons in
Python against the tens of thousands of timers pending at a few hundred calls a second),
popped again or left there cancelled till the heap is compacted.

Timers of one delay set at a clock that does not go back come due in the order they were
set, so ``TimerQueues`` keeps them per delay in a FIFO and runs one reactor timer per delay,
for the head of its queue: setting, cancelling and running one is O(1). Each fires at the
time a ``callLater`` would have fired it (same clock, same arithmetic); timers due at the
same moment run in the order they were set. A cancelled timer leaves its queue at once (an
``OrderedDict``: O(1) removal anywhere), so neither it nor what it names stays for the cyclic
GC to walk; when the last timer of a delay is cancelled its reactor timer is cancelled too,
so nothing is left pending (``getDelayedCalls()`` is empty) when nothing is.
"""
from __future__ import annotations

from collections import OrderedDict

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.logger import Logger

log = Logger(namespace="sipgw.timerqueue")

_EPSILON = 1e-9  # seconds: a head re-armed by difference may come due a rounding early


class Timer:
    """One timer of a queue: ``active()``, ``cancel()`` as a ``DelayedCall`` has them."""

    __slots__ = ("time", "func", "args", "queue", "cancelled", "called")

    def __init__(self, time: float, func, args: tuple, queue: "_Queue"):
        self.time, self.func, self.args, self.queue = time, func, args, queue
        self.cancelled = self.called = False

    def getTime(self) -> float:  # noqa: N802 - the IDelayedCall spelling
        return self.time

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        if self.cancelled:
            raise AlreadyCancelled  # as a DelayedCall refuses
        if self.called:
            raise AlreadyCalled
        self.cancelled = True
        self.func = self.args = None  # the transaction or call it names is free at once
        self.queue.remove(self)


class _Queue:
    def __init__(self, clock, delay: float):
        self.clock, self.delay = clock, delay
        self.timers: OrderedDict[Timer, None] = OrderedDict()  # in the order due
        self.call = None  # the reactor timer for the first live timer
        self.running = False

    def add(self, func, args: tuple) -> Timer:
        timer = Timer(self.clock.seconds() + self.delay, func, args, self)
        self.timers[timer] = None
        if self.call is None and not self.running:
            self.call = self.clock.callLater(self.delay, self._run)
        return timer

    def remove(self, timer: Timer) -> None:
        del self.timers[timer]
        if not self.timers and self.call is not None:  # nothing left: no reactor timer
            self.call.cancel()
            self.call = None

    def _run(self) -> None:
        self.call = None
        self.running = True
        try:
            self._run_due()
        finally:
            self.running = False
        if self.timers:  # the next one due (possibly set by a timer run just now)
            head = next(iter(self.timers))
            self.call = self.clock.callLater(max(0.0, head.time - self.clock.seconds()),
                                             self._run)

    def _run_due(self) -> None:
        timers = self.timers
        while timers:
            timer = next(iter(timers))
            if timer.time > self.clock.seconds() + _EPSILON:
                break
            del timers[timer]
            timer.called = True
            func, args = timer.func, timer.args
            timer.func = timer.args = None
            try:
                func(*args)
            except Exception:  # as the reactor does with a DelayedCall that raises
                log.failure("while running the timer {func!r}", func=func)


class TimerQueues:
    """``callLater(delay, f, *args)`` for timers whose delays are few (constants and
    settings, not values read from peers): one FIFO and one reactor timer per delay."""

    def __init__(self, clock):
        self.clock = clock
        self._queues: dict[float, _Queue] = {}

    def callLater(self, delay: float, func, *args) -> Timer:  # noqa: N802 - IReactorTime's name
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = _Queue(self.clock, delay)
        return queue.add(func, args)
