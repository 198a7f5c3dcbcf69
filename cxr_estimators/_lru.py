"""The byte-bounded, thread-safe LRU behind :mod:`cxr_estimators.io`'s decode cache.

``functools.lru_cache`` bounds the number of entries, not their bytes, and cannot be
resized or inspected by size; hence this small class.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, namedtuple

CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "max_bytes", "nbytes", "currsize"])


class _LRUCache:
    """Thread-safe mapping bounded by the total ``nbytes`` of its arrays, with counters."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.misses = 0
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key, value):
        with self._lock:
            if value.nbytes > self.max_bytes:
                return  # would evict everything else and still not fit
            old = self._data.pop(key, None)
            self.nbytes += value.nbytes - (0 if old is None else old.nbytes)
            self._data[key] = value
            self._evict()

    def _evict(self):
        while self.nbytes > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def resize(self, max_bytes):
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def clear(self):
        with self._lock:
            self._data.clear()
            self.nbytes = 0
            self.hits = self.misses = 0

    def info(self):
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.max_bytes, self.nbytes,
                             len(self._data))
