"""Side-by-side timing helpers: candidates measured interleaved in one run, best of N."""

import time


def interleaved_best(candidates, repeats=7):
    """Runs each zero-argument callable `repeats` times, round-robin; returns best seconds per name."""
    best = {name: float("inf") for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
