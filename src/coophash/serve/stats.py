"""Request counters and latency percentiles over a sliding window, safe to update from many threads."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

__all__ = ["RequestStats"]

_PERCENTILES = (50, 90, 99)


class RequestStats:
    """Counts requests by status class and keeps the last ``window`` latencies (seconds)."""

    def __init__(self, window: int) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=int(window))
        self._served = 0
        self._errors = {"4xx": 0, "5xx": 0}
        self._started = time.time()

    def record(self, status: int, seconds: float) -> None:
        """Count one answered request."""
        with self._lock:
            self._served += 1
            self._latencies.append(float(seconds))
            if 400 <= status < 500:
                self._errors["4xx"] += 1
            elif status >= 500:
                self._errors["5xx"] += 1

    def summary(self) -> dict:
        """``requests``, error counts, uptime and latency percentiles in milliseconds (None before any)."""
        with self._lock:
            lat = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
            served, errors = self._served, dict(self._errors)
        pct = {f"p{p}": (float(np.percentile(lat, p)) * 1e3 if lat.size else None) for p in _PERCENTILES}
        return {
            "requests": served,
            "errors": errors,
            "uptime_s": round(time.time() - self._started, 3),
            "latency_ms": {**pct, "window": int(lat.size)},
        }
