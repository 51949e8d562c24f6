"""What the benchmarks share."""

from __future__ import annotations

import threading
import time
from typing import Callable


def longest_failure(samples: list[tuple[float, bool]]) -> float:
    """Seconds of the longest run of failed probes in (time, ok) samples: the downtime a user saw."""
    longest, since = 0.0, None
    for at, ok in samples:
        if not ok and since is None:
            since = at
        elif ok and since is not None:
            longest, since = max(longest, at - since), None
    if since is not None:
        longest = max(longest, samples[-1][0] - since)
    return longest


class Prober:
    """Call `probe` every 10 ms in a thread while the `with` block runs; a probe that returns
    False or raises counts as failed. `downtime()` is the longest run of failures."""

    def __init__(self, probe: Callable[[], bool]):
        self._probe = probe
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                ok = bool(self._probe())
            except Exception:  # noqa: BLE001 - any error is what the user sees as "down"
                ok = False
            self.samples.append((at, ok))
            time.sleep(max(0.0, 0.010 - (time.monotonic() - at)))

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def downtime(self) -> float:
        return longest_failure(self.samples)
