/* The WHEP player page: an RTCPeerConnection whose recvonly offer, its ICE candidates
   gathered (sipgw does not take trickle ICE), is POSTed to /whep/<streamName>; the 201's body
   is the answer and its Location the session, DELETEd by Stop. */
"use strict";

(function () {
    var params = new URLSearchParams(window.location.search);
    var form = document.getElementById("form");
    var streamName = document.getElementById("streamName");
    var playBtn = document.getElementById("playBtn");
    var stopBtn = document.getElementById("stopBtn");
    var video = document.getElementById("video");
    var statusEl = document.getElementById("status");
    var infoEl = document.getElementById("info");
    var token = params.get("token");
    var pc = null;
    var session = null;  // the Location of the 201

    streamName.value = params.get("streamName") || params.get("stream") || "";

    function headers(extra) {
        var all = Object.assign({}, extra);
        if (token) {
            all.Authorization = "Bearer " + token;
        }
        return all;
    }

    function showStatus(status, info) {
        statusEl.textContent = status;
        statusEl.className = "status " + status;
        infoEl.textContent = info || "";
        var running = status === "PENDING" || status === "PLAYING";
        playBtn.disabled = running;
        stopBtn.disabled = !running;
        streamName.disabled = running;
    }

    function gathered(connection) {
        return new Promise(function (resolve) {
            if (connection.iceGatheringState === "complete") {
                resolve();
                return;
            }
            var timer = setTimeout(resolve, 2000);  // send what is there after 2 s
            connection.addEventListener("icegatheringstatechange", function () {
                if (connection.iceGatheringState === "complete") {
                    clearTimeout(timer);
                    resolve();
                }
            });
        });
    }

    function close(status, info) {
        if (session) {
            fetch(session, {method: "DELETE", headers: headers({})}).catch(function () {});
            session = null;
        }
        if (pc) {
            pc.close();
            pc = null;
        }
        showStatus(status, info);
    }

    async function play(name) {
        var endpoint = new URL("whep/" + encodeURIComponent(name), window.location.href).href;
        var media = new MediaStream();
        showStatus("PENDING");
        pc = new RTCPeerConnection();
        var connection = pc;
        connection.addTransceiver("video", {direction: "recvonly"});
        connection.addTransceiver("audio", {direction: "recvonly"});
        video.srcObject = media;
        connection.ontrack = function (event) {
            media.addTrack(event.track);
        };
        connection.onconnectionstatechange = function () {
            if (connection !== pc) {
                return;
            }
            if (connection.connectionState === "connected") {
                showStatus("PLAYING");
            } else if (connection.connectionState === "failed") {
                close("FAILED", "WebRTC connection failed");
            }
        };
        await connection.setLocalDescription(await connection.createOffer());
        await gathered(connection);
        var response = await fetch(endpoint, {method: "POST", body: connection.localDescription.sdp,
                                              headers: headers({"Content-Type": "application/sdp"})});
        if (connection !== pc) {  // stopped meanwhile: end the session it made, if any
            if (response.status === 201) {
                fetch(new URL(response.headers.get("Location"), endpoint).href,
                      {method: "DELETE", headers: headers({})}).catch(function () {});
            }
            return;
        }
        if (response.status !== 201) {
            var body = await response.json().catch(function () { return {}; });
            close("FAILED", "HTTP " + response.status + ": " + (body.error || response.statusText));
            return;
        }
        session = new URL(response.headers.get("Location"), endpoint).href;
        await connection.setRemoteDescription({type: "answer", sdp: await response.text()});
    }

    form.addEventListener("submit", function (event) {
        event.preventDefault();
        var name = streamName.value.trim();
        if (!name) {
            showStatus("FAILED", "the stream name is required");
            return;
        }
        play(name).catch(function (error) {
            close("FAILED", String(error));
        });
    });
    stopBtn.addEventListener("click", function () {
        close("STOPPED");
    });
    if (params.has("autoplay") && streamName.value) {
        playBtn.click();
    }
})();
