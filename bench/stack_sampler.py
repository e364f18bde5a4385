"""Where a Python process spends its time, thread by thread: a sampling profiler for the serving benchmarks.

    python bench/stack_sampler.py --out stacks.txt -m tunesmith.cli.main deploy --model /tmp/m05
    python bench/stack_sampler.py --out stacks.txt bench/engine_decode.py --model /tmp/m05 --concurrency 64

Every --interval seconds it records each thread's stack; at exit (and every 10 s, so a killed server leaves a
report) it writes, per thread, the share of samples whose innermost frames are each function ("self") and the
share of samples that pass through each function ("inclusive"). A GPU-bound loop shows its time in the calls that
wait for the device (item, tolist, synchronize); a loop bound by Python shows it spread over our own functions.
cProfile sees one thread only and slows every call; sampling sees the generation loop's own thread at a cost of
one stack walk per interval.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import os
import runpy
import sys
import threading
import time


class Sampler:
    def __init__(self, out: str, interval: float, when_exists: str | None = None) -> None:
        self.out, self.interval, self.when_exists = out, interval, when_exists
        self.self_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.started = time.time()
        self.me = None

    def run(self) -> None:
        self.me = threading.get_ident()
        last_write = time.monotonic()
        while True:
            time.sleep(self.interval)
            if self.when_exists and not os.path.exists(self.when_exists):
                continue
            names = {t.ident: t.name for t in threading.enumerate()}
            with self.lock:
                for ident, frame in sys._current_frames().items():
                    if ident == self.me:
                        continue
                    thread = names.get(ident, str(ident))
                    self.samples[thread] += 1
                    seen, depth, innermost = set(), 0, []
                    while frame is not None and depth < 80:
                        code = frame.f_code
                        where = f"{code.co_name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
                        if depth < 3:
                            innermost.append(where)
                        if where not in seen:
                            self.inclusive[thread][where] += 1
                            seen.add(where)
                        frame, depth = frame.f_back, depth + 1
                    self.self_counts[thread][" <- ".join(innermost)] += 1
            if time.monotonic() - last_write > 10:
                self.write()
                last_write = time.monotonic()

    def write(self) -> None:
        with self.lock:
            lines = [f"# {sum(self.samples.values())} samples every {self.interval * 1000:.1f} ms over "
                     f"{time.time() - self.started:.1f} s"]
            for thread, total in self.samples.most_common():
                if total < 20:
                    continue
                lines.append(f"\n## thread {thread}: {total} samples")
                lines.append("### self (innermost three frames)")
                lines += [f"{100 * n / total:5.1f}%  {where}" for where, n in self.self_counts[thread].most_common(25)]
                lines.append("### inclusive")
                lines += [f"{100 * n / total:5.1f}%  {where}" for where, n in self.inclusive[thread].most_common(40)]
        with open(self.out + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.out + ".tmp", self.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.002)
    parser.add_argument("--when-exists", metavar="PATH",
                        help="sample only while PATH exists (bench/engine_decode.py --sample-flag marks measured rounds)")
    parser.add_argument("-m", dest="module", help="run this module as __main__ (like python -m)")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="script and its arguments, or the module's arguments")
    args = parser.parse_args()
    sampler = Sampler(args.out, args.interval, args.when_exists)
    threading.Thread(target=sampler.run, name="stack-sampler", daemon=True).start()
    atexit.register(sampler.write)
    if args.module:
        sys.argv = [args.module, *args.target]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args.target)
        runpy.run_path(args.target[0], run_name="__main__")


if __name__ == "__main__":
    main()
