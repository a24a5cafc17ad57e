"""Timing helpers shared by the benchmarks: warm, median of repeats, same process for every contender."""
import statistics
import time


def sync(device):
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench(fn, device="cpu", min_repeats=5, max_repeats=50, budget_s=3.0, warmup=1):
    """Median wall time of fn() in seconds: `warmup` untimed calls, then repeats until the budget is spent."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_interleaved(fns, device="cpu", min_repeats=5, max_repeats=2000, budget_s=3.0, warmup=1):
    """Fastest and median wall time (seconds) of each callable in `fns`, calling them in turn (one call of each per
    round, the order reversed every other round) until the budget is spent: drifts in machine speed, and whatever a
    call leaves behind for the next one, hit every contender alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(device)
    times = [[] for _ in fns]
    start = time.perf_counter()
    rounds = 0
    while rounds < max_repeats and (rounds < min_repeats or time.perf_counter() - start < budget_s):
        order = range(len(fns)) if rounds % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            sync(device)
            times[i].append(time.perf_counter() - t0)
        rounds += 1
    return [(min(ts), statistics.median(ts)) for ts in times]


def table(rows, headers):
    """Format rows (lists of str) as a Markdown table."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def fmt_ms(s):
    return f"{s * 1e3:.2f} ms"
