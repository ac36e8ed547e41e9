"""W1 (the Gaussian kernel sum of `keopsc bench`: D = 3, float32, uniform points in the unit
cube, g = 0.5) through keops_rs.jax under jax.jit, against JAX's own dense version (blocked
over rows with jax.lax.map, each block rematerialised in the backward pass so that memory stays
bounded) and against keops-rs called from Rust on the same arrays, all in one run.

Forward: `out = Sum_j exp(-|x_i - y_j|^2 g) b_j`. Forward+backward: `jax.value_and_grad` of
`sum(w * out)` with respect to x, y, b and g (all four inputs). The Rust baseline of the
forward is `Kernel::call` (`Kernel._rust_call_seconds`); of the backward, the same backward plan
and compiled kernels as the custom call runs, timed in Rust (`_jax_rust_backward_seconds`).
Each figure is the fastest of several rounds, every contender once per round (compilation
excluded).

    .venv/bin/python python/bench/jax_w1.py [N ...]        # default: 10000 100000
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import keops_rs
import keops_rs.jax as kj
from keops_rs import _keops_rs

SOURCE = """kernel w1 {
    x = Vi(3)
    y = Vj(3)
    b = Vj(1)
    g = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) * g) * b, 0)
}
"""


def fastest(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def dense_w1(x, y, b, g):
    """JAX's own W1: rows of x in blocks (about 16 M pairs each), the squared distances by the
    matrix-product expansion (XLA's fastest form), each block rematerialised by the backward."""
    n, m = x.shape[0], y.shape[0]
    block = max(1, min(n, (1 << 24) // m))
    blocks = -(-n // block)
    xp = jnp.pad(x, ((0, blocks * block - n), (0, 0))).reshape(blocks, block, 3)
    yy = jnp.sum(y * y, axis=1)

    def rows(xs):
        d = jnp.sum(xs * xs, axis=1)[:, None] + yy[None, :] - 2.0 * xs @ y.T
        return jnp.exp(-jnp.maximum(d, 0.0) * g[0]) @ b

    return jax.lax.map(jax.checkpoint(rows), xp).reshape(-1, 1)[:n]


def measure(n, rounds, once=()):
    rng = np.random.default_rng(0)
    x = rng.random((n, 3), dtype=np.float32)
    y = rng.random((n, 3), dtype=np.float32)
    b = rng.random((n, 1), dtype=np.float32)
    g = np.array([0.5], dtype=np.float32)
    w = rng.random((n, 1), dtype=np.float32)
    args = [jnp.asarray(a) for a in (x, y, b, g)]
    wj = jnp.asarray(w)
    k = kj.Kernel(SOURCE)

    def keops_loss(*a):
        return jnp.sum(wj * k(*a))

    def dense_loss(*a):
        return jnp.sum(wj * dense_w1(*a))

    everything = (0, 1, 2, 3)
    programs = {
        "keops_rs.jax forward": jax.jit(k),
        "keops_rs.jax forward+backward": jax.jit(jax.value_and_grad(keops_loss, argnums=everything)),
        "JAX dense forward": jax.jit(dense_w1),
        "JAX dense forward+backward": jax.jit(jax.value_and_grad(dense_loss, argnums=everything)),
    }
    compiled = {name: p.lower(*args).compile() for name, p in programs.items()}
    # The results agree before anything is timed.
    out = np.asarray(compiled["keops_rs.jax forward"](*args))
    dense = np.asarray(compiled["JAX dense forward"](*args))
    assert np.allclose(out, dense, rtol=1e-3), np.abs(out - dense).max()

    numpy_kernel = keops_rs.Kernel(SOURCE)
    plan, _ = _keops_rs._jax_backward(k._id, ["x", "y", "b", "g"], "float32")
    run = {name: (lambda c=c: fastest(lambda: c(*args), 1)) for name, c in compiled.items()}
    run["Rust forward"] = lambda: numpy_kernel._rust_call_seconds(x, y, b, g, repeats=1)
    run["Rust backward"] = lambda: _keops_rs._jax_rust_backward_seconds(plan, [x, y, b, g, w], 1)
    order = ["Rust forward", "keops_rs.jax forward", "Rust backward", "keops_rs.jax forward+backward",
             "JAX dense forward", "JAX dense forward+backward"]
    # Round after round, each contender once per round (in reverse order every other round), so
    # that all see the same load on a shared machine; the fastest of the rounds is kept. A pause
    # before each lets the thread pools of the previous one (XLA's spin before they sleep) go
    # idle. At large N, JAX's dense forward+backward (minutes) runs in the first round only.
    seconds = {name: float("inf") for name in order}
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            if r > 0 and name in once:
                continue
            time.sleep(0.2)
            seconds[name] = min(seconds[name], run[name]())
    seconds["Rust forward+backward"] = seconds["Rust forward"] + seconds["Rust backward"]
    return seconds


def main():
    sizes = [int(float(a)) for a in sys.argv[1:]] or [10_000, 100_000]
    print(f"W1 f32, D = 3; jax {jax.__version__} on {jax.devices()[0].platform}; fastest of the rounds")
    for n in sizes:
        rounds = 15 if n <= 20_000 else 3
        once = () if n <= 20_000 else ("JAX dense forward+backward",)
        s = measure(n, rounds, once)
        pairs = float(n) * n
        print(f"\nN = M = {n:.0e} ({rounds} rounds)")
        for name, t in s.items():
            note = "  (first round only)" if name in once else ""
            print(f"  {name:32s} {t * 1e3:10.1f} ms  {pairs / t:9.3e} pairs/s{note}")
        for what in ("forward", "forward+backward"):
            ours = s[f"keops_rs.jax {what}"]
            print(f"  {what}: keops_rs.jax / Rust = {ours / s[f'Rust {what}']:.3f}, "
                  f"JAX dense / keops_rs.jax = {s[f'JAX dense {what}'] / ours:.2f}x")


if __name__ == "__main__":
    main()
