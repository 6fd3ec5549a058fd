/*
 * A stream player speaking the WCS websocket protocol directly (as flashphoner-core.js does),
 * no library: connection -> getUserData, playStream with a recvonly offer -> setRemoteSDP
 * (the answer, with the server's candidates) -> notifyStreamStatusEvent PLAYING/STOPPED/FAILED.
 * There is no trickle ICE: the offer is sent once ICE gathering is complete.
 *
 *   const player = new WcsPlayer({url, name, video, onStatus: (status, info) => ...});
 *   player.play();  ...  player.stop();
 *
 * Statuses: PENDING, PLAYING, STOPPED, FAILED (+ info).
 */
"use strict";

(function (global) {
    var GATHERING_TIMEOUT_MS = 5000;
    var STOP_TIMEOUT_MS = 3000;

    function randomId() {
        // crypto.randomUUID needs a secure context; getRandomValues does not
        var bytes = new Uint8Array(16);
        global.crypto.getRandomValues(bytes);
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        var hex = Array.prototype.map.call(bytes, function (b) {
            return (b + 0x100).toString(16).slice(1);
        }).join("");
        return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20),
                hex.slice(20)].join("-");
    }

    function iceGatheringComplete(pc, timeoutMs) {
        return new Promise(function (resolve) {
            if (pc.iceGatheringState === "complete") {
                resolve();
                return;
            }
            var timer = setTimeout(done, timeoutMs);  // send what was gathered so far
            function done() {
                clearTimeout(timer);
                pc.removeEventListener("icegatheringstatechange", check);
                resolve();
            }
            function check() {
                if (pc.iceGatheringState === "complete") {
                    done();
                }
            }
            pc.addEventListener("icegatheringstatechange", check);
        });
    }

    /** The default WCS websocket URL of a page: ws(s)://<page host>:8080 (8443 over https). */
    function defaultWsUrl(location) {
        location = location || global.location;
        var secure = location.protocol === "https:";
        var host = location.hostname || "127.0.0.1";
        if (host.indexOf(":") >= 0) {
            host = "[" + host + "]";  // IPv6 literal
        }
        return (secure ? "wss://" : "ws://") + host + ":" + (secure ? 8443 : 8080);
    }

    function WcsPlayer(options) {
        this.url = options.url;
        this.name = options.name;
        this.video = options.video;
        this.onStatus = options.onStatus || function () {};
        this.appKey = options.appKey || "defaultApp";
        this.authToken = options.authToken || undefined;
        this.id = randomId();
        this.status = "NEW";
        this.info = "";
        this.ws = null;
        this.pc = null;
        this._stopTimer = null;
    }

    WcsPlayer.prototype._setStatus = function (status, info) {
        if (this.status === status && this.info === (info || "")) {
            return;
        }
        this.status = status;
        this.info = info || "";
        try {
            this.onStatus(status, this.info, this);
        } catch (e) {
            console.error("onStatus handler failed", e);
        }
    };

    WcsPlayer.prototype._ended = function () {
        return this.status === "STOPPED" || this.status === "FAILED";
    };

    WcsPlayer.prototype._send = function (message, obj) {
        if (this.ws && this.ws.readyState === WebSocket.OPEN) {
            this.ws.send(JSON.stringify({message: message, data: [obj]}));
        }
    };

    /** Connect, send the offer once ICE gathering is complete, and play into the video element. */
    WcsPlayer.prototype.play = function () {
        var self = this;
        if (self.ws) {
            throw new Error("this player was already started; make a new one");
        }
        self._setStatus("PENDING");
        try {
            self.ws = new WebSocket(self.url);
        } catch (e) {
            self._finish("FAILED", "Bad websocket URL: " + e.message);
            return;
        }
        self.ws.onopen = function () {
            self._send("connection", {
                appKey: self.appKey, authToken: self.authToken, mediaProviders: ["WebRTC"],
                keepAlive: true, clientVersion: "2.0",
                clientBrowserVersion: global.navigator.userAgent
            });
        };
        self.ws.onmessage = function (event) {
            var frame;
            try {
                frame = JSON.parse(event.data);
            } catch (e) {
                console.warn("ignored a frame that is not JSON", event.data);
                return;
            }
            self._onMessage(frame.message, frame.data || []);
        };
        self.ws.onerror = function () {
            if (!self._ended()) {
                self._finish("FAILED", "Cannot connect to " + self.url);
            }
        };
        self.ws.onclose = function (event) {
            if (!self._ended()) {
                self._finish("FAILED", "Connection closed" + (event.reason ? ": " + event.reason : ""));
            }
        };
    };

    WcsPlayer.prototype._onMessage = function (message, data) {
        var obj = data[0] || {};
        switch (message) {
        case "getUserData":
            if (this.authToken === undefined) {
                this.authToken = obj.authToken;
            }
            this._offer().catch(function (e) {
                this._finish("FAILED", "WebRTC: " + e.message);
            }.bind(this));
            break;
        case "setRemoteSDP":
            if (data[0] === this.id && this.pc) {
                this.pc.setRemoteDescription({type: "answer", sdp: data[1]}).catch(function (e) {
                    this._finish("FAILED", "Bad answer: " + e.message);
                }.bind(this));
            }
            break;
        case "notifyStreamStatusEvent":
            if (obj.mediaSessionId !== this.id) {
                break;
            }
            if (obj.status === "STOPPED" || obj.status === "FAILED") {
                this._finish(obj.status, obj.info);
            } else {
                this._setStatus(obj.status, obj.info);
            }
            break;
        case "ping":
            this._send("pong", null);
            break;
        case "fail":
            if (obj.id === this.id || obj.apiMethod === "connection") {
                this._finish("FAILED", obj.info);
            } else {
                console.warn("server says:", obj.info);
            }
            break;
        default:
            break;
        }
    };

    WcsPlayer.prototype._offer = function () {
        var self = this;
        var pc = new RTCPeerConnection({iceServers: []});
        self.pc = pc;
        pc.addTransceiver("video", {direction: "recvonly"});
        pc.addTransceiver("audio", {direction: "recvonly"});
        var remote = new MediaStream();
        pc.ontrack = function (event) {
            remote.addTrack(event.track);
            if (self.video && self.video.srcObject !== remote) {
                self.video.srcObject = remote;
            }
            if (self.video) {
                var playing = self.video.play();
                if (playing && playing.catch) {
                    playing.catch(function () {
                        // autoplay with sound refused: play muted, a click unmutes
                        self.video.muted = true;
                        self.video.play().catch(function () {});
                    });
                }
            }
        };
        pc.onconnectionstatechange = function () {
            if (pc.connectionState === "failed" && !self._ended()) {
                self._finish("FAILED", "WebRTC connection failed");
            }
        };
        return pc.createOffer().then(function (offer) {
            return pc.setLocalDescription(offer);
        }).then(function () {
            return iceGatheringComplete(pc, GATHERING_TIMEOUT_MS);
        }).then(function () {
            if (self._ended()) {
                return;
            }
            self._send("playStream", {
                mediaSessionId: self.id, name: self.name, published: false,
                hasVideo: true, hasAudio: true, status: "PENDING", record: false,
                mediaProvider: "WebRTC", sdp: pc.localDescription.sdp
            });
        });
    };

    /** Ask the server to stop; the player ends on its STOPPED, or after a short timeout. */
    WcsPlayer.prototype.stop = function () {
        var self = this;
        if (self._ended()) {
            return;
        }
        if (!self.ws || self.ws.readyState !== WebSocket.OPEN || !self.pc) {
            self._finish("STOPPED");
            return;
        }
        self._send("stopStream", {mediaSessionId: self.id, name: self.name});
        self._stopTimer = setTimeout(function () {
            self._finish("STOPPED");
        }, STOP_TIMEOUT_MS);
    };

    WcsPlayer.prototype._finish = function (status, info) {
        if (this._stopTimer) {
            clearTimeout(this._stopTimer);
            this._stopTimer = null;
        }
        this._setStatus(status, info);
        if (this.pc) {
            this.pc.close();
        }
        if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
            this.ws.close();
        }
        if (this.video && this.video.srcObject) {
            this.video.srcObject = null;
        }
    };

    /** Video size and inbound-rtp counters (for a status line or a test). */
    WcsPlayer.prototype.stats = function () {
        var video = this.video;
        var result = {status: this.status, width: video ? video.videoWidth : 0,
                      height: video ? video.videoHeight : 0, video: {}, audio: {}};
        if (!this.pc || this.pc.signalingState === "closed") {
            return Promise.resolve(result);
        }
        return this.pc.getStats().then(function (report) {
            report.forEach(function (r) {
                if (r.type === "inbound-rtp") {
                    result[r.kind] = {packetsReceived: r.packetsReceived,
                                      framesDecoded: r.framesDecoded, jitter: r.jitter};
                }
            });
            return result;
        });
    };

    global.WcsPlayer = WcsPlayer;
    global.WcsPlayer.defaultWsUrl = defaultWsUrl;
})(window);
