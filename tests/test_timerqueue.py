"""Fixed-delay timer queues (sipgw/timerqueue.py) on task.Clock."""
import pytest
from twisted.internet import task
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.logger import globalLogPublisher

from sipgw.timerqueue import TimerQueues


def test_timers_fire_when_calllater_would_in_the_order_set():
    """Each timer runs at its own set time + delay, in order, on one reactor timer per delay."""
    clock, fired = task.Clock(), []
    timers = TimerQueues(clock)
    timers.callLater(2.0, fired.append, "a")
    clock.advance(0.5)
    timers.callLater(2.0, fired.append, "b")
    timers.callLater(0.5, fired.append, "short")
    assert len(clock.getDelayedCalls()) == 2  # one per delay, not one per timer
    clock.advance(0.5)
    assert fired == ["short"]
    clock.advance(0.999)
    assert fired == ["short"]
    clock.advance(0.001)
    assert fired == ["short", "a"]
    clock.advance(0.499)
    assert fired == ["short", "a"]
    clock.advance(0.001)
    assert fired == ["short", "a", "b"] and clock.getDelayedCalls() == []


def test_timers_due_at_once_run_in_the_order_set():
    """Timers set at the same moment run together, first set first."""
    clock, fired = task.Clock(), []
    timers = TimerQueues(clock)
    for name in "xyz":
        timers.callLater(32.0, fired.append, name)
    clock.advance(32.0)
    assert fired == ["x", "y", "z"]


def test_cancelled_timer_lets_go_and_the_last_cancel_leaves_nothing_pending():
    """A cancelled timer drops its function at once; with none live, no reactor timer stays."""
    clock, fired = task.Clock(), []
    timers = TimerQueues(clock)
    first = timers.callLater(1.0, fired.append, "first")
    second = timers.callLater(1.0, fired.append, "second")
    first.cancel()
    assert first.func is None and first.args is None and not first.active()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    assert fired == ["second"] and not second.active()
    third = timers.callLater(1.0, fired.append, "third")
    third.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(5)
    assert fired == ["second"]


def test_cancel_twice_or_after_the_call_is_refused_as_a_delayedcall_refuses():
    """cancel() on a cancelled or called timer raises AlreadyCancelled / AlreadyCalled."""
    clock = task.Clock()
    timers = TimerQueues(clock)
    done = timers.callLater(1.0, lambda: None)
    clock.advance(1.0)
    with pytest.raises(AlreadyCalled):
        done.cancel()
    gone = timers.callLater(1.0, lambda: None)
    gone.cancel()
    with pytest.raises(AlreadyCancelled):
        gone.cancel()


def test_timer_set_by_a_running_timer_fires_a_full_delay_later():
    """A timer set from a running one (same delay) is due delay after that moment, and the
    queue's next reactor timer is for the earliest one still waiting."""
    clock, fired = task.Clock(), []
    timers = TimerQueues(clock)

    def again():
        fired.append(("again", clock.seconds()))
        if [name for name, _ in fired].count("again") < 3:
            timers.callLater(1.0, again)

    timers.callLater(1.0, again)
    clock.advance(0.25)
    timers.callLater(1.0, lambda: fired.append(("other", clock.seconds())))
    for _ in range(12):
        clock.advance(0.25)
    assert fired == [("again", 1.0), ("other", 1.25), ("again", 2.0), ("again", 3.0)]
    assert clock.getDelayedCalls() == []


def test_a_timer_that_raises_is_logged_and_the_others_still_run():
    """An exception from one timer is logged (as the reactor logs a DelayedCall's), and the
    timers due after it run."""
    clock, fired, events = task.Clock(), [], []
    timers = TimerQueues(clock)
    timers.callLater(1.0, lambda: 1 / 0)
    timers.callLater(1.0, fired.append, "after")
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert fired == ["after"]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(ZeroDivisionError)
