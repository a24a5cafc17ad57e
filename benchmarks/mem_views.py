"""Peak memory of crop_resize's PIL-exact path: what one call adds to the resident set, in a fresh process per case.

    python benchmarks/mem_views.py [--case NAME ...]

Each case runs in its own subprocess: import dynrefer, allocate the image (every page touched), read the peak
resident set (``VmHWM``; ``ru_maxrss`` reads the same from a small parent, but carries a larger parent's peak across
exec), run one call, read it again; the difference is the call's extra peak memory (output included).
Cases:
  big-crop   a 10000 x 10000 crop of a 10000 x 10000 RGB image resized to 8 x 8 (horizontal pass first);
  tall-crop  a 2000 x 10000 crop resized to 8 x 8 (vertical pass first);
  small-box  one 64 x 48 box of a 20000 x 20000 RGB image resized to 224 x 224.
"""
import argparse
import json
import subprocess
import sys

CASES = {
    "big-crop": (10000, 10000, [0, 0, 10000, 10000], 8),
    "tall-crop": (10000, 2000, [0, 0, 2000, 10000], 8),
    "small-box": (20000, 20000, [1000, 2000, 1064, 2048], 224),
}

CHILD = r"""
import json, sys
import numpy as np
from dynrefer.ops import crop_resize
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])
h, w, box, size = json.loads(sys.argv[1])
img = np.empty((h, w, 3), np.uint8)
img[:] = 7
img[::97, :, 1] = 200
before = hwm()
out = crop_resize(img, np.array([box], np.float32), size=size, mode="pil")
after = hwm()
print(json.dumps({"extra_kib": after - before, "sum": float(out.sum())}))
"""


def measure(name):
    h, w, box, size = CASES[name]
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps([h, w, box, size])], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["extra_kib"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    args = ap.parse_args()
    for name in args.case or list(CASES):
        h, w, box, size = CASES[name]
        kib = measure(name)
        print(f"{name:10s} image {h}x{w}, box {box} -> {size}x{size}: extra peak RSS {kib / 1024:8.1f} MiB")


if __name__ == "__main__":
    main()
