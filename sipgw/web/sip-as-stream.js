/*
 * The "SIP as stream" page: /call/startup from the form, /call/find polling, /call/send_dtmf,
 * /call/terminate, and a WcsPlayer of the call's stream once the call is ESTABLISHED.
 * The REST API is on this page's origin, under /rest-api.
 */
"use strict";

(function () {
    var REST = "/rest-api";
    var POLL_MS = 1500;
    var FIELDS = ["callee", "toStream", "sipLogin", "sipAuthenticationName", "sipPassword",
                  "sipDomain", "sipPort", "sipOutboundProxy"];
    var FLAGS = ["sipRegisterRequired", "hasAudio", "hasVideo"];
    var ENDED = ["FINISH", "FAILED", "BUSY"];
    var REMEMBERED = "sipgw.sipAsStream";  // form values but the password, in localStorage

    var params = new URLSearchParams(window.location.search);
    var $ = function (id) { return document.getElementById(id); };
    var call = null;  // {id, status, pollTimer, player}

    // -- REST -------------------------------------------------------------------------
    function rest(method, body) {
        return fetch(REST + method, {
            method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify(body || {})
        }).then(function (response) {
            return response.text().then(function (text) {
                var data = null;
                try {
                    data = text ? JSON.parse(text) : null;
                } catch (e) {
                    data = null;
                }
                if (!response.ok) {
                    var message = (data && data.error) || text || response.statusText;
                    var error = new Error(message + " (HTTP " + response.status + ")");
                    error.status = response.status;
                    throw error;
                }
                return data;
            });
        }, function (e) {
            throw new Error("REST request failed: " + e.message);
        });
    }

    function showError(message) {
        $("error").textContent = message || "";
    }

    // -- form -----------------------------------------------------------------------
    function restoreForm() {
        var saved = {};
        try {
            saved = JSON.parse(window.localStorage.getItem(REMEMBERED) || "{}");
        } catch (e) {
            saved = {};
        }
        FIELDS.forEach(function (name) {
            var value = params.get(name) !== null ? params.get(name) : saved[name];
            if (value !== undefined && value !== null && name !== "sipPassword") {
                $(name).value = value;
            }
        });
        if (params.get("sipPassword") !== null) {
            $("sipPassword").value = params.get("sipPassword");
        }
        FLAGS.forEach(function (name) {
            var value = params.get(name) !== null ? params.get(name) : saved[name];
            if (value !== undefined && value !== null) {
                $(name).checked = value === true || value === "true";
            }
        });
        $("wsUrl").value = params.get("ws") || saved.wsUrl || WcsPlayer.defaultWsUrl();
    }

    function saveForm() {
        var saved = {wsUrl: $("wsUrl").value};
        FIELDS.forEach(function (name) {
            if (name !== "sipPassword") {
                saved[name] = $(name).value;
            }
        });
        FLAGS.forEach(function (name) { saved[name] = $(name).checked; });
        try {
            window.localStorage.setItem(REMEMBERED, JSON.stringify(saved));
        } catch (e) { /* private mode */ }
    }

    function newCallId() {
        var bytes = new Uint8Array(6);
        window.crypto.getRandomValues(bytes);
        return "call-" + Array.prototype.map.call(bytes, function (b) {
            return (b + 0x100).toString(16).slice(1);
        }).join("");
    }

    function setFormEnabled(enabled) {
        FIELDS.concat(FLAGS, ["wsUrl"]).forEach(function (name) { $(name).disabled = !enabled; });
        $("callBtn").disabled = !enabled;
    }

    // -- call -------------------------------------------------------------------------
    function showCall(status, info) {
        $("callStatus").textContent = status || "";
        $("callStatus").className = "status " + (status || "");
        $("callInfo").textContent = info || "";
        var active = !!status && ENDED.indexOf(status) < 0;
        $("hangupBtn").disabled = !active;
        $("dtmfBtn").disabled = status !== "ESTABLISHED" && status !== "HOLD";
        setFormEnabled(!active);
    }

    function startCall() {
        showError("");
        saveForm();
        var callId = newCallId();
        var body = {callId: callId};
        FIELDS.forEach(function (name) {
            var value = $(name).value.trim();
            if (value) {
                body[name] = value;
            }
        });
        FLAGS.forEach(function (name) { body[name] = $(name).checked ? "true" : "false"; });
        if (!body.sipAuthenticationName && body.sipLogin) {
            body.sipAuthenticationName = body.sipLogin;
        }
        stopPlayer();
        call = {id: callId, status: "NEW", pollTimer: null, player: null, streamName: null};
        $("callId").textContent = callId;
        showCall("PENDING", "");
        setFormEnabled(false);
        rest("/call/startup", body).then(function () {
            poll();
        }, function (e) {
            showError("Call refused: " + e.message);
            showCall("FAILED", "");
            call = null;
        });
    }

    function poll() {
        if (!call) {
            return;
        }
        var current = call;
        rest("/call/find", {callId: current.id}).then(function (found) {
            if (call !== current) {
                return;
            }
            var c = (found && found[0]) || {};
            current.status = c.status;
            showCall(c.status, c.info);
            if (c.status === "ESTABLISHED" && !current.player) {
                startPlayer(c.streamName || $("toStream").value.trim() || current.id);
            }
            if (ENDED.indexOf(c.status) >= 0) {
                endCall();
            } else {
                current.pollTimer = setTimeout(poll, POLL_MS);
            }
        }, function (e) {
            if (call !== current) {
                return;
            }
            if (e.status === 404) {  // as the WCS pages read it: the call is over and gone
                showCall("FINISH", "Call not found");
                endCall();
            } else {
                showError("Status request failed: " + e.message);
                current.pollTimer = setTimeout(poll, POLL_MS);
            }
        });
    }

    function endCall() {
        if (call && call.pollTimer) {
            clearTimeout(call.pollTimer);
        }
        stopPlayer();
        call = null;
        setFormEnabled(true);
    }

    function hangup() {
        if (!call) {
            return;
        }
        showError("");
        $("hangupBtn").disabled = true;
        rest("/call/terminate", {callId: call.id}).then(function () {
            if (call && call.pollTimer) {  // show FINISH now, not in a poll interval
                clearTimeout(call.pollTimer);
                poll();
            }
        }, function (e) {
            showError("Hang up failed: " + e.message);
            $("hangupBtn").disabled = false;
        });
    }

    function sendDtmf(event) {
        event.preventDefault();
        var digits = $("dtmf").value.trim().toUpperCase();
        if (!call || !digits) {
            return;
        }
        showError("");
        $("dtmfResult").textContent = "";
        rest("/call/send_dtmf", {callId: call.id, dtmf: digits, type: $("dtmfType").value})
            .then(function (refused) {
                if (refused && refused[0] && refused[0].error) {  // the call lives on
                    showError("DTMF failed: " + refused[0].error);
                    return;
                }
                $("dtmfResult").textContent = "DTMF " + digits + " sent (" + $("dtmfType").value + ")";
                $("dtmf").value = "";
            }, function (e) {
                showError("DTMF failed: " + e.message);
            });
    }

    // -- player -----------------------------------------------------------------------
    function showPlayer(status, info) {
        $("playerStatus").textContent = status || "";
        $("playerStatus").className = "status " + (status || "");
        $("playerInfo").textContent = info || "";
    }

    function startPlayer(streamName) {
        $("streamName").textContent = streamName;
        call.player = new WcsPlayer({url: $("wsUrl").value.trim(), name: streamName,
                                     video: $("video"), onStatus: showPlayer});
        window.sipgwPlayer = call.player;  // for the console
        call.player.play();
    }

    function stopPlayer() {
        if (call && call.player) {
            call.player.stop();
        }
    }

    // -- wiring -------------------------------------------------------------------------
    restoreForm();
    $("callForm").addEventListener("submit", function (event) {
        event.preventDefault();
        startCall();
    });
    $("hangupBtn").addEventListener("click", hangup);
    $("dtmfForm").addEventListener("submit", sendDtmf);
    window.addEventListener("beforeunload", function () {
        if (call && call.player) {
            call.player.stop();
        }
    });
})();
