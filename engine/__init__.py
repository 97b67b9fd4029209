"""The risk engine: supervisor, workers, features, journal. See README.md."""
import shm  # noqa: F401  (first: it sweeps Numba caches made from older sources, shm/jitcache.py)
