"""The ZeroMQ front door: ROUTER socket, codec, fast path. See docs/PROTOCOL.md."""
import shm  # noqa: F401  (first: it sweeps Numba caches made from older sources, shm/jitcache.py)
