"""The one thread boundary for media work (PyAV encode/mux, RTMP and file writes).

A ``MediaJob`` takes one stream's frames on the reactor thread (a sink it drains at
once, stamping each frame with its arrival time) and hands them to its own worker
thread through a bounded ``FrameQueue``.  The reactor never waits on the worker: a
full queue drops what it holds and restarts at the next keyframe (asking the stream
for one), exactly as a slow ``Sink`` does.  The worker reports back only through
``reactor.callFromThread``; everything a job shows (state, reason, counters) is
changed on the reactor thread.
"""
from __future__ import annotations

import collections
import threading
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="sipgw.media")

DEFAULT_QUEUE_FRAMES = 500  # ~4 s of 25 fps video + 50/s audio


class FrameQueue:
    """Bounded queue between the reactor (``put``, never blocks) and one worker (``get``)."""

    def __init__(self, maxlen: int, has_video: bool):
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self.has_video = has_video
        self.dropped = 0
        self.overflows = 0
        self.closed = False
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._waiting_keyframe = False

    def put(self, frame, arrival: float) -> bool:
        """Queue ``frame``; False when the queue overflowed and wants a keyframe."""
        with self._cond:
            if self.closed:
                return True
            is_key = frame.kind == "video" and frame.keyframe
            if self._waiting_keyframe:
                if not is_key:
                    self.dropped += 1
                    return True
                self._waiting_keyframe = False
            if len(self._items) >= self.maxlen:
                self.overflows += 1
                self.dropped += len(self._items)
                self._items.clear()
                if self.has_video and not is_key:
                    self.dropped += 1
                    self._waiting_keyframe = True
                    return False
            self._items.append((frame, arrival))
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None):
        """The next ``(frame, arrival)``; None once closed and empty; raises TimeoutError."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
            return self._items.popleft() if self._items else None

    def clear(self) -> int:
        with self._cond:
            n = len(self._items)
            self.dropped += n
            self._items.clear()
            return n

    def close(self, discard: bool = False) -> None:
        """No more frames; ``discard`` also throws away those not yet taken."""
        with self._cond:
            self.closed = True
            if discard:
                self.dropped += len(self._items)
                self._items.clear()
            self._cond.notify_all()

    def wait_frame(self) -> bool:
        """Block until a frame is queued (True) or the queue is closed with none (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self.closed)
            return bool(self._items)

    def wait_closed(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s, waking early when closed; True if closed."""
        with self._cond:
            if not self.closed:
                self._cond.wait_for(lambda: self.closed, timeout)
            return self.closed

    def __len__(self) -> int:
        return len(self._items)


class MediaJob:
    """One stream's frames consumed on a worker thread of its own.

    Subclasses implement ``work()`` (worker thread: loop on ``next_frame()`` until it
    returns None, then finalize) and may override ``on_state`` hooks.  ``done`` fires on
    the reactor thread once the worker has returned.  ``stream`` None: a job fed by no
    stream (a sound file played into a call), named by ``label``.
    """

    kind = "job"
    kinds = ("audio", "video")  # what the job takes of its stream

    def __init__(self, reactor, stream, *, queue_frames: int = DEFAULT_QUEUE_FRAMES,
                 label: str = ""):
        self.reactor = reactor
        self.stream = stream
        self.label = label or stream.name
        self.state = "STARTING"
        self.info = ""
        self.done = defer.Deferred()
        self.finished = False
        self.queue = FrameQueue(queue_frames, stream is not None and stream.has_video)
        self._sink = None
        self._stopping = False
        self.clock = time.monotonic  # arrival stamps (tests put a fake clock here)
        self.observers: list = []  # callables(job) on every state change (REST hooks)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"sipgw-{self.kind}-{self.label}")

    # -- reactor thread ------------------------------------------------------------
    def start(self) -> "MediaJob":
        if self.stream is not None:
            self._sink = self.stream.subscribe(maxlen=64, name=self.kind, burst=False,
                                               kinds=self.kinds)
        self._thread.start()
        if self._sink is not None:
            self._pump()
        return self

    def stop(self, info: str = "", discard: bool = False) -> defer.Deferred:
        """Stop taking frames; the worker finishes what is queued (unless ``discard``)."""
        if not self._stopping:
            self._stopping = True
            if info and not self.info:
                self.info = info
            if self._sink is not None:
                self._sink.close()
            self.queue.close(discard=discard)
        return self.done

    def _pump(self, frame=None, first: bool = True) -> None:
        """Move every frame the sink holds into the queue; resume when the next arrives."""
        if not first and not self._arrived(frame):
            return
        while not self._stopping:
            box: list = []
            d = self._sink.get()
            d.addCallback(box.append)
            if not box:
                d.addCallback(lambda _: self._pump(box[0], first=False))
                return
            if not self._arrived(box[0]):
                return

    def _arrived(self, frame) -> bool:
        if frame is None:  # the stream ended
            if not self._stopping:
                self._stopping = True
                self.queue.close()
            return False
        if self._stopping:
            return False
        if not self.queue.put(frame, self.clock()):
            self.stream.request_keyframe()
        return True

    def report(self, state: str, info: str = "") -> None:
        """Worker thread: change the visible state on the reactor thread."""
        self.reactor.callFromThread(self._set_state, state, info)

    def call(self, fn, *args) -> None:
        """Worker thread: run ``fn(*args)`` on the reactor thread."""
        self.reactor.callFromThread(fn, *args)

    def _set_state(self, state: str, info: str) -> None:
        if self.finished:
            return
        changed = (state, info) != (self.state, self.info)
        self.state, self.info = state, info
        if changed:
            self.on_state(state, info)
            for observer in self.observers:
                observer(self)

    def on_state(self, state: str, info: str) -> None:
        """Reactor thread: the worker reported a new state (for logging)."""

    def _done(self, state: str, info: str) -> None:
        self._set_state(state, info)
        self.finished = True
        if self._sink is not None:
            self._sink.close()
        self._stopping = True
        self.queue.close(discard=True)
        self.done.callback(self)

    # -- worker thread --------------------------------------------------------------
    def _run(self) -> None:
        state, info = "FAILED", "internal error"
        try:
            state, info = self.work()
        except Exception as exc:  # a bug: keep the daemon up, say so in the log
            info = f"internal error: {exc.__class__.__name__}"
            failure = Failure()
            self.call(lambda: log.failure("{kind} of {name} failed", failure, kind=self.kind,
                                          name=self.label))
        finally:
            self.reactor.callFromThread(self._done, state, info)

    def next_frame(self, timeout: float | None = None):
        return self.queue.get(timeout)

    def work(self) -> tuple[str, str]:
        """Worker thread: consume frames; return the final (state, info)."""
        raise NotImplementedError


def wait_done(reactor, jobs: list["MediaJob"], timeout: float) -> defer.Deferred:
    """Fires with the jobs still running once every job is done or ``timeout`` seconds
    have passed (0: no limit), whichever comes first; the jobs themselves are untouched."""
    result = defer.Deferred()
    timer = None

    def fire(_=None):
        if not result.called:
            if timer is not None and timer.active():
                timer.cancel()
            result.callback([job for job in jobs if not job.finished])
        return _

    if jobs and timeout:
        timer = reactor.callLater(timeout, fire)
    defer.DeferredList([job.done for job in jobs]).addCallback(fire)
    return result
