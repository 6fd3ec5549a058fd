/* The Player page: one WcsPlayer driven by the form (see wcs-player.js). */
"use strict";

(function () {
    var params = new URLSearchParams(window.location.search);
    var form = document.getElementById("form");
    var url = document.getElementById("url");
    var streamName = document.getElementById("streamName");
    var playBtn = document.getElementById("playBtn");
    var stopBtn = document.getElementById("stopBtn");
    var video = document.getElementById("video");
    var statusEl = document.getElementById("status");
    var infoEl = document.getElementById("info");
    var details = document.getElementById("details");
    var player = null;
    var statsTimer = null;

    url.value = params.get("ws") || WcsPlayer.defaultWsUrl();
    streamName.value = params.get("streamName") || params.get("stream") || "";

    function showStatus(status, info) {
        statusEl.textContent = status;
        statusEl.className = "status " + status;
        infoEl.textContent = info || "";
        var running = status === "PENDING" || status === "PLAYING";
        playBtn.disabled = running;
        stopBtn.disabled = !running;
        url.disabled = streamName.disabled = running;
        if (!running && statsTimer) {
            clearInterval(statsTimer);
            statsTimer = null;
        }
    }

    function showDetails() {
        if (!player) {
            return;
        }
        player.stats().then(function (s) {
            details.textContent = s.width ? s.width + "x" + s.height + ", " +
                (s.video.framesDecoded || 0) + " frames decoded, " +
                (s.audio.packetsReceived || 0) + " audio packets" : "";
        });
    }

    form.addEventListener("submit", function (event) {
        event.preventDefault();
        if (!url.value.trim() || !streamName.value.trim()) {
            showStatus("FAILED", "Websocket URL and stream name are required");
            return;
        }
        player = new WcsPlayer({url: url.value.trim(), name: streamName.value.trim(), video: video,
                                onStatus: showStatus});
        window.sipgwPlayer = player;  // for the console
        player.play();
        statsTimer = setInterval(showDetails, 1000);
    });
    stopBtn.addEventListener("click", function () {
        if (player) {
            player.stop();
        }
    });
    if (params.has("autoplay") && streamName.value) {
        playBtn.click();
    }
})();
