"""What the benchmarks share."""

from __future__ import annotations


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
