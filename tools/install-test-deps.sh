#!/usr/bin/env bash
# Install the Debian packages that sipgw's interop tests start as real peers, and the
# npm package whose pages the browser tests serve (into var/npm, ignored by git).
# Idempotent: does nothing (and needs no network) when everything is present.
# Python packages are not installed here: they go into .venv (tools/venv.sh).
set -euo pipefail

PACKAGES=(
    sip-tester        # sipp: UAS/UAC scenarios and load
    kamailio          # registrar + proxy with digest auth
    kamailio-tls-modules # tls.so: Kamailio as SIP over TLS registrar and proxy
    baresip-core      # softphone callee (auto-answer)
    baresip-ffmpeg    # baresip avformat (video file source) and avcodec (H264)
    ffmpeg            # makes the test video; ffprobe checks media
    iproute2          # ss, ip: socket checks and network namespaces
    procps            # ps, for checking that no peer is left behind
    coreutils         # stdbuf (line-buffered baresip log)
    nginx-light       # RTMP server for /push (with the module below)
    libnginx-mod-rtmp # nginx-rtmp: live RTMP read-back of pushed streams
    chromium          # headless browser playing streams over WebRTC
    chromium-driver   # /usr/bin/chromedriver for selenium (nothing downloaded)
    dnsmasq-base      # local DNS server (NAPTR/SRV/A/AAAA) for the RFC 3263 tests
    redis-server      # shared state of several sipgw nodes (tests/interop/test_cluster.py)
)
if ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(npm)   # installs the WebSDK below (Debian's npm brings nodejs)
fi

# The WCS WebSDK (MIT): its unchanged Player page is the acceptance test of the signalling.
WEBSDK_VERSION=2.0.276
NPM_PREFIX="$(cd "$(dirname "$0")/.." && pwd)/var/npm"
install_websdk() {
    if [ -f "$NPM_PREFIX/node_modules/@flashphoner/websdk/flashphoner.js" ] &&
        grep -q "\"version\": \"$WEBSDK_VERSION\"" \
            "$NPM_PREFIX/node_modules/@flashphoner/websdk/package.json"; then
        echo "install-test-deps: @flashphoner/websdk@$WEBSDK_VERSION present"
        return
    fi
    echo "install-test-deps: npm install @flashphoner/websdk@$WEBSDK_VERSION into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error \
        "@flashphoner/websdk@$WEBSDK_VERSION"
}

# hls.js (Apache-2.0): the HLS player the browser test runs against the daemon's HLS port.
HLSJS_VERSION=1.7.4
install_hlsjs() {
    if grep -qs "\"version\": \"$HLSJS_VERSION\"" "$NPM_PREFIX/node_modules/hls.js/package.json"; then
        echo "install-test-deps: hls.js@$HLSJS_VERSION present"
        return
    fi
    echo "install-test-deps: npm install hls.js@$HLSJS_VERSION into $NPM_PREFIX"
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error "hls.js@$HLSJS_VERSION"
}

bash "$(dirname "$0")/apt-install.sh" "${PACKAGES[@]}"
install_websdk
install_hlsjs
