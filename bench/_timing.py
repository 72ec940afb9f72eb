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


def best_of_interleaved(fns: dict, repeats: int, self_timed: bool = False) -> dict:
    """``best_of`` for several contenders, called in turn (a, b, c, a, b, c, ...) so that a slow
    phase of a shared machine hits all of them alike. Returns {name: fastest seconds}. With
    ``self_timed`` every contender returns the seconds to count itself (to leave its setup out)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            best[name] = min(best[name], out if self_timed else time.perf_counter() - t0)
    return best
