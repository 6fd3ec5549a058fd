"""A WCS websocket player built on aiortc, as a browser page would play a stream:
connection -> getUserData, playStream with a recvonly offer -> setRemoteSDP -> PLAYING.

Used by the interop tests and the fan-out benchmark (which counts packets, no decode)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import aioice.ice
from aiortc import (RTCConfiguration, RTCPeerConnection, RTCRtpReceiver,
                    RTCSessionDescription)
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class WcsSession:
    """One websocket session; ``play`` adds a viewer of a stream."""

    def __init__(self, url: str):
        self.url = url
        self.events: list[dict] = []  # every message received, in order
        self.taken: set[int] = set()

    async def open(self, ssl=None):
        """Open the websocket only (ws:// or wss:// with an ssl context).

        The client is the ``websockets`` library (not Autobahn, which the server uses): one
        process cannot hold Autobahn's asyncio and Twisted flavours at once (txaio), and the
        unit tests import the server's."""
        self.messages: asyncio.Queue = asyncio.Queue()
        self.ws = await ws_connect(self.url, ssl=ssl, compression=None, max_size=None,
                                   ping_interval=None, open_timeout=15)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        """Every message as a dict; the close as a ``__closed__`` message with its code."""
        try:
            async for payload in self.ws:
                self.messages.put_nowait(json.loads(payload))
        except ConnectionClosed:
            pass
        code = self.ws.close_code if self.ws.close_code is not None else 1006
        self.messages.put_nowait({"message": "__closed__", "data": [{"code": code}]})

    async def connect(self, ssl=None, **connection):
        """Open and say 'connection'; returns getUserData, fail or the close."""
        await self.open(ssl)
        self.send("connection", {"appKey": "defaultApp", "mediaProviders": ["WebRTC"],
                                 "clientVersion": "2.0", **connection})
        return await self.wait_for(lambda m: m["message"] in ("getUserData", "fail", "__closed__"))

    def send(self, message, obj):
        self.send_raw(json.dumps({"message": message, "data": [obj]}).encode())

    def send_raw(self, payload: bytes):
        """One text frame; sends are queued in order (the library's send is a coroutine)."""
        asyncio.ensure_future(self.ws.send(payload, text=True))

    async def wait_for(self, predicate, timeout: float = 15):
        """The first message, received or to come, that matches and was not taken before."""
        async def loop():
            index = 0
            while True:
                while index < len(self.events):
                    message = self.events[index]
                    index += 1
                    if id(message) not in self.taken and predicate(message):
                        self.taken.add(id(message))
                        return message
                self.events.append(await self.messages.get())
        return await asyncio.wait_for(loop(), timeout)

    async def status(self, media_session_id, *statuses, timeout: float = 15):
        return (await self.wait_for(
            lambda m: m["message"] == "notifyStreamStatusEvent"
            and m["data"][0].get("mediaSessionId") == media_session_id
            and m["data"][0].get("status") in statuses, timeout))["data"][0]

    async def play(self, name: str, decode: bool = True, audio_codecs=None) -> "Player":
        """``audio_codecs``: mime types the player accepts for audio (default: all)."""
        player = Player(self, name, decode, audio_codecs)
        await player.start()
        return player

    def close(self):
        asyncio.ensure_future(self.ws.close())


async def refused_then_let_in(url: str, refused_token: str, token: str):
    """Connect with ``refused_token`` and wait for that socket to close, then connect another
    session with ``token``: (the first answer, the close, the second answer)."""
    refused = WcsSession(url)
    answer = await refused.connect(authToken=refused_token)
    closed = await refused.wait_for(lambda m: m["message"] == "__closed__")
    allowed = WcsSession(url)
    welcome = await allowed.connect(authToken=token)
    allowed.close()
    return answer, closed, welcome


class Player:
    """An aiortc peer connection receiving one stream; counts what arrives."""

    def __init__(self, session: WcsSession, name: str, decode: bool, audio_codecs=None):
        self.session = session
        self.audio_codecs = audio_codecs
        self.name = name
        self.decode = decode
        self.id = str(uuid.uuid4())
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = {"video": 0, "audio": 0}
        self.size = None
        self.first_frame_at = None
        self.started_at = None
        self.tasks = []

    async def start(self):
        self.pc.addTransceiver("video", direction="recvonly")
        audio = self.pc.addTransceiver("audio", direction="recvonly")
        if self.audio_codecs:
            capabilities = RTCRtpReceiver.getCapabilities("audio").codecs
            audio.setCodecPreferences([c for c in capabilities if c.mimeType in self.audio_codecs])

        @self.pc.on("track")
        def on_track(track):
            self.tasks.append(asyncio.ensure_future(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.started_at = time.monotonic()
        self.session.send("playStream", {"mediaSessionId": self.id, "name": self.name,
                                         "published": False, "hasVideo": True,
                                         "hasAudio": True, "sdp": self.pc.localDescription.sdp})
        answer = await self.session.wait_for(
            lambda m: (m["message"] == "setRemoteSDP" and m["data"][0] == self.id) or
            (m["message"] == "notifyStreamStatusEvent" and m["data"][0].get("mediaSessionId")
             == self.id and m["data"][0].get("status") == "FAILED"))
        if answer["message"] != "setRemoteSDP":
            raise RuntimeError(answer["data"][0].get("info"))
        self.answer_sdp = answer["data"][1]
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer_sdp, "answer"))

    async def _consume(self, track):
        try:
            while True:
                frame = await track.recv()
                self.frames[track.kind] += 1
                if track.kind == "video":
                    if self.first_frame_at is None:
                        self.first_frame_at = time.monotonic()
                    self.size = (frame.width, frame.height)
        except Exception:
            return

    async def close(self):
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
