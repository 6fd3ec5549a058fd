from setuptools import find_packages, setup

setup(
    name="sipgw",
    version="0.1.0",
    description="SIP calls as live streams for browsers (WCS-compatible REST and websocket)",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["sipgw", "sipgw.*"]) + ["twisted.plugins"],
    package_data={"sipgw": ["web/*", "rest/openapi.json", "sounds/*.wav"]},
    install_requires=[
        "twisted>=23.10",
        "autobahn>=23.1",
        # The WebRTC fast path (sipgw/webrtc/forward.py) uses aiortc and aioice internals,
        # checked by tests/webrtc/test_forward.py: widen these ranges only after it passes.
        "aiortc>=1.16,<1.17",
        "aioice>=0.13,<0.14",  # ICE host candidates pinned to webrtc_ice_address (sipgw/webrtc/viewer.py)
        "av>=12",
        "service-identity>=24.1",  # server certificates of SIP over TLS (sipgw/sip/transport.py)
        "pyOpenSSL>=23.0",  # TLS for wss, https and SIP (Twisted's ssl; sipgw/service.py)
        "zope.interface>=5",  # IHandshakeListener of SIP over TLS (a Twisted dependency anyway)
        "numpy>=1.24",  # audio sample conversion (sipgw/media/audio.py)
        "prometheus-client>=0.20",  # /metrics (sipgw/metrics.py)
        "pylibsrtp>=0.10",  # SRTP/SRTCP of SDES calls (sipgw/rtp/srtp.py); aiortc's own too
        "redis>=5.0",  # several nodes on Redis (sipgw/cluster/store.py; imported only then)
    ],
    extras_require={
        # selenium drives Debian's chromium via /usr/bin/chromedriver; setuptools builds
        # sipgw's own wheel in the install test (tests/interop/test_install.py)
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100",
                 "selenium>=4.20", "setuptools>=70.1",
                 "websockets>=13.1",  # the tests' websocket client (tests/interop/ws_viewer.py)
                 "cryptography>=41",  # test certificates (tests/certs.py, tests/ws/test_wss.py)
                 # REST answers checked against openapi.json (tests/rest/conftest.py)
                 "jsonschema>=4.18", "referencing>=0.28"],
    },
)
