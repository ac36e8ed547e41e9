"""Per-call overhead of a tiny kernel through keops_rs.Kernel.__call__ against the Rust
Kernel::call on the same arrays, in the same process and run (the fastest of many calls each).

    .venv/bin/python python/bench/overhead.py [repeats]
"""

import sys
import time

import numpy as np

import keops_rs

SOURCE = """
kernel tiny {
    x = Vi(3)
    y = Vj(3)
    b = Vj(1)
    Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)
}
"""


def fastest(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    k = keops_rs.Kernel(SOURCE)
    rng = np.random.default_rng(0)
    for n, m in [(1, 1), (10, 10), (100, 100)]:
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal((n, 3)).astype(dtype)
            y = rng.standard_normal((m, 3)).astype(dtype)
            b = rng.standard_normal((m, 1)).astype(dtype)
            k(x, y, b)
            rust = k._rust_call_seconds(x, y, b, repeats=repeats)
            positional = fastest(lambda: k(x, y, b), repeats)
            keyword = fastest(lambda: k(x=x, y=y, b=b), repeats)
            print(
                f"N = M = {n:>3} {np.dtype(dtype).name}: Rust Kernel::call {rust * 1e6:7.2f} us, "
                f"Kernel.__call__ {positional * 1e6:7.2f} us (+{(positional - rust) * 1e6:.2f} us, "
                f"x{positional / rust:.2f}), by keyword {keyword * 1e6:7.2f} us "
                f"(+{(keyword - rust) * 1e6:.2f} us)"
            )


if __name__ == "__main__":
    main()
