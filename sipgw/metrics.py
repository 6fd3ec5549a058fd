"""Prometheus metrics of one daemon (``/metrics``) and its health (``/health``).

Each daemon has its own ``CollectorRegistry`` (never prometheus_client's global one), so two
in one process, as in the tests, count apart. What the daemon already counts is read at
scrape time by one collector: calls by status, SIP messages in and out (the transport's
counters), retransmissions (the transaction layer's), RTP packets, bytes, loss and jitter
(each stream's counters: nothing is added to the per-packet path), viewers, pushes and
recordings, HLS (streams muxed, requests, held and blocking reloads: the HLS manager's own
counters). Only what happens once per call is counted as it happens: the setup time, the
calls ended by final status, and the reactor's lag (one timer a second).
"""
from __future__ import annotations

import collections

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.application import service

from .calls import CallStatus

SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
RTP_TOTALS = ("packets", "bytes", "lost", "srtp_auth_failures")


class Metrics:
    """The metrics of the calls (``ua``: the CallManager), its media workers and its players."""

    def __init__(self, ua, media=None, viewers=None) -> None:
        self.ua = ua
        self.media = media  # sipgw.service._MediaService: .pushes, .recorders
        self.viewers = viewers  # callables giving the number of players, one per kind
        self.registry = CollectorRegistry()
        self.setup_time = Histogram(
            "sipgw_call_setup_seconds", "From /call/startup to ESTABLISHED",
            buckets=SETUP_BUCKETS, registry=self.registry)
        self.calls_ended = Counter("sipgw_calls_ended", "Calls ended, by final status",
                                   ["status"], registry=self.registry)
        self.reactor_lag = Histogram(
            "sipgw_reactor_lag_seconds", "How late a 1 s reactor timer fires",
            buckets=LAG_BUCKETS, registry=self.registry)
        # RTP counters of the streams that are gone, so the totals never go down.
        self.retired = {"audio": collections.Counter(), "video": collections.Counter()}
        ua.call_observers.append(self._call_status)
        ua.streams.listeners.append(self._stream_event)
        self.registry.register(_Collector(self))

    def exposition(self) -> tuple[bytes, bytes]:
        """(Content-Type, body) of a scrape, in the Prometheus text format."""
        return CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(self.registry)

    def _call_status(self, call) -> None:
        status = call.status
        if status == CallStatus.ESTABLISHED and call.history.count(status.value) == 1:
            self.setup_time.observe(max(0.0, self.ua.reactor.seconds() - call.started_at))
        if status.ended:
            self.calls_ended.labels(status.value).inc()

    def _stream_event(self, stream, event: str) -> None:
        if event != "ended":
            return
        for kind, counters in _stream_counters(stream).items():
            if kind in self.retired:
                for name in RTP_TOTALS:
                    self.retired[kind][name] += max(0, int(counters.get(name, 0)))


def _stream_counters(stream) -> dict:
    return stream.counters_source() if stream.counters_source else stream.counters


class _Collector:
    """Reads the daemon's own counters when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self):
        return []  # no fixed description: families are made at each scrape

    def collect(self):
        ua = self.m.ua
        calls = GaugeMetricFamily("sipgw_calls", "Calls known (ended ones for call_retention), "
                                  "by WCS status", labels=["status"])
        by_status = collections.Counter(call.status.value for call in list(ua.calls.values()))
        for status in CallStatus:
            calls.add_metric([status.value], by_status[status.value])
        yield calls
        transport = ua.sip.transport
        for direction in ("received", "sent"):
            family = CounterMetricFamily(f"sipgw_sip_messages_{direction}",
                                         f"SIP messages {direction}, by method and status code "
                                         "(empty for requests)", labels=["method", "code"])
            for (method, code), count in sorted(getattr(transport, direction, {}).items()):
                family.add_metric([method, code], count)
            yield family
        retransmissions = CounterMetricFamily(
            "sipgw_sip_retransmissions", "SIP messages sent again (Timers A, E, G; a response "
            "resent for a retransmitted request; a 2xx resent until its ACK), by method",
            labels=["method"])
        for method, count in sorted(ua.sip.transactions.retransmissions.items()):
            retransmissions.add_metric([method], count)
        yield retransmissions
        yield from self._rtp(ua.streams.all())
        yield GaugeMetricFamily("sipgw_streams", "Live streams (one per call with media)",
                                value=len(ua.streams.all()))
        viewers = GaugeMetricFamily("sipgw_viewers", "Players of the streams, by kind",
                                    labels=["kind"])
        for kind, count in (self.m.viewers or {}).items():
            viewers.add_metric([kind], count())
        yield viewers
        media = self.m.media
        pushes = GaugeMetricFamily("sipgw_pushes", "RTMP pushes running, by status",
                                   labels=["status"])
        recordings = GaugeMetricFamily("sipgw_recordings", "Recordings running",
                                       value=len(media.recorders.active) if media else 0)
        if media is not None:
            states = collections.Counter(p.state for p in list(media.pushes.pushes.values()))
            for state, count in sorted(states.items()):
                pushes.add_metric([state], count)
        yield pushes
        yield recordings
        injections = GaugeMetricFamily("sipgw_injections", "Injections into calls running "
                                       "(/call/inject_*), by status", labels=["status"])
        if media is not None and getattr(media, "injections", None) is not None:
            states = collections.Counter(i.state for i in media.injections.running())
            for state, count in sorted(states.items()):
                injections.add_metric([state], count)
        yield injections
        hls = getattr(media, "hls", None)
        if hls is not None:
            yield from _hls(hls)

    def _rtp(self, streams):
        totals = {kind: collections.Counter(c) for kind, c in self.m.retired.items()}
        jitter = GaugeMetricFamily("sipgw_rtp_jitter", "Interarrival jitter of each live "
                                   "stream (RFC 3550 §6.4.1, RTP timestamp units)",
                                   labels=["stream", "kind"])
        for stream in streams:
            for kind, counters in _stream_counters(stream).items():
                if kind not in totals:
                    continue
                for name in RTP_TOTALS:
                    totals[kind][name] += max(0, int(counters.get(name, 0)))
                if "jitter" in counters:
                    jitter.add_metric([stream.name, kind], counters["jitter"])
        helps = {"packets": "RTP packets received", "bytes": "RTP bytes received",
                 "lost": "RTP packets lost (RFC 3550 cumulative loss)",
                 "srtp_auth_failures": "SRTP/SRTCP packets dropped: authentication or replay "
                                       "check failed"}
        for name in RTP_TOTALS:
            family = CounterMetricFamily(f"sipgw_rtp_{name}", helps[name], labels=["kind"])
            for kind in sorted(totals):
                family.add_metric([kind], totals[kind][name])
            yield family
        yield jitter


HLS_KINDS = ("playlist", "init", "segment", "part", "unknown")
HLS_RELOADS = ("answered", "timed_out", "too_far", "refused")


def _hls(hls):
    """The HLS manager's figures (sipgw.media.hls.HlsManager)."""
    yield GaugeMetricFamily("sipgw_hls_streams", "Streams muxed to HLS now",
                            value=hls.streams_muxed())
    requests = CounterMetricFamily("sipgw_hls_requests", "HLS requests, by resource (a "
                                   "playlist, an init section, a segment, a part)",
                                   labels=["kind"])
    for kind in HLS_KINDS:
        requests.add_metric([kind], hls.requests[kind])
    yield requests
    yield GaugeMetricFamily("sipgw_hls_held_requests", "HLS requests held now (blocking "
                            "playlist reloads, hinted parts, first playlists)",
                            value=hls.held.count)
    reloads = CounterMetricFamily("sipgw_hls_blocking_reloads", "Blocking playlist reloads "
                                  "(_HLS_msn), by outcome", labels=["result"])
    for result in HLS_RELOADS:
        reloads.add_metric([result], hls.reloads[result])
    yield reloads


class LagMonitor(service.Service):
    """Observes how late a timer of ``interval`` seconds fires: the reactor's loop lag."""

    name = "reactor-lag"

    def __init__(self, reactor, histogram: Histogram, interval: float = 1.0) -> None:
        self._reactor = reactor
        self._histogram = histogram
        self.interval = interval
        self._call = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _schedule(self) -> None:
        self._due = self._reactor.seconds() + self.interval
        self._call = self._reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._histogram.observe(max(0.0, self._reactor.seconds() - self._due))
        self._schedule()


class Health:
    """What ``/health`` answers: 200 while every part is up, 503 while one is down or the
    daemon is shutting down (``stopping``)."""

    def __init__(self) -> None:
        self.parts: dict = {}  # name -> callable() -> bool
        self.stopping = False

    def report(self) -> tuple[int, dict]:
        parts = {name: bool(is_up()) for name, is_up in self.parts.items()}
        if self.stopping:
            return 503, {"status": "stopping", **parts}
        up = all(parts.values())
        return (200 if up else 503), {"status": "up" if up else "down", **parts}


class HealthService(service.Service):
    """Marks ``health`` stopping as soon as the daemon begins to shut down."""

    name = "health"

    def __init__(self, health: Health) -> None:
        self.health = health

    def startService(self) -> None:
        super().startService()
        self.health.stopping = False

    def stopService(self):
        self.health.stopping = True
        return super().stopService()
