"""Recording and RTMP republishing: PyAV work on worker threads, never on the reactor.

``worker`` is the one thread boundary; ``push`` and ``recorder`` are the jobs and their
managers; ``pipeline``, ``avc``, ``timeline``, ``flv`` and ``audio`` are the pieces a
job runs on its thread; ``rtmp`` is the blocking RTMP publisher those threads use.
"""
