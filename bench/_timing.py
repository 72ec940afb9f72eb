"""Timing shared by the bench scripts."""
import time


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls, in seconds (the least disturbed by a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
