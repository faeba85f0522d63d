"""What every open page shows, computed once per change and shared by all pages.

Each open page refreshes every few seconds (the app's gr.Timer): twenty pages are ten refreshes a second, and
each used to read every job, summarise it and redraw the chart on its own, starving the training process on a
small machine. A value here is rebuilt only when its key changes (the sizes and times of the files it was read
from) or it is older than max_age_s: file times are coarse, so a change they miss shows within that time.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable


def file_key(*paths) -> tuple:
    """(inode, size, mtime) of each file; None for a missing one."""
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


class SharedView:
    """A small cache of named values, each with the key it was built for. One lock: when twenty pages ask
    for the same changed value at once, one builds it and the others wait for it instead of building it too."""

    def __init__(self, max_age_s: float, capacity: int = 256):
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: dict = {}
        self.builds = 0           # how often a value was (re)built: the benchmark and the tests read it

    def get(self, name, key, build: Callable):
        with self._lock:
            entry = self._entries.get(name)
            now = time.monotonic()
            if entry is not None and entry[0] == key and now - entry[1] < self.max_age_s:
                return entry[2]
            value = build()
            if len(self._entries) >= self.capacity:
                self._entries.clear()
            self._entries[name] = (key, now, value)
            self.builds += 1
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RefreshBudget:
    """How often each open page refreshes, so that all pages together stay within `max_per_s` refreshes a
    second. Gradio's own work per timer event (queue join, event stream, state and component handling) is
    about 12 ms of CPU even when the handler does nothing (bench/RESULTS.md, load), so twenty pages at the
    base interval take a tenth of a core from the trainer, and on two cores a training step stalls whenever
    either of its threads is interrupted. One to `max_per_s * base_s` pages refresh every `base_s`; more
    open pages each refresh less often (20 pages at 4 a second: every 5 s). A page counts as open while it
    refreshed within the last three intervals."""

    def __init__(self, base_s: float, max_per_s: float, clock: Callable[[], float] = time.monotonic):
        self.base_s = base_s
        self.max_per_s = max_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._interval = base_s

    def interval(self, page: str) -> float:
        """Record a refresh of `page` (its session) and return the interval every page should use now."""
        with self._lock:
            now = self._clock()
            self._seen[page] = now
            horizon = now - 3 * self._interval
            for name in [name for name, seen in self._seen.items() if seen < horizon]:
                del self._seen[name]
            wanted = len(self._seen) / self.max_per_s
            self._interval = max(self.base_s, math.ceil(wanted * 2) / 2)   # in half seconds: few updates
            return self._interval

    def open_pages(self) -> int:
        with self._lock:
            return len(self._seen)
