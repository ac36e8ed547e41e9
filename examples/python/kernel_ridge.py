"""Gaussian kernel ridge regression solved by conjugate gradients, each matrix-vector product
one keops-rs reduction.

Noisy samples (x_j, y_j) of a 1-D function are fitted by f(x) = sum_j K(x, x_j) alpha_j with the
Gaussian kernel K(x, x') = exp(-|x - x'|^2 / (2 sigma^2)), where alpha solves
(K + lambda I) alpha = y. Conjugate gradients needs only products K @ p: each is one call of a
``keops_rs.Genred`` Sum reduction (the N x N kernel matrix is never formed), and the same Genred
evaluates the fit at the test points. The script prints the relative residual of each iteration
and the test error against the noiseless function, and plots the fit against the truth.

    python examples/python/kernel_ridge.py --n 5000 --out /tmp/krr
"""

import argparse
import pathlib
import time

import matplotlib
import numpy as np

from keops_rs import Genred

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless back end)

# a_i = sum_j exp(-g |x_i - y_j|^2) b_j, one row per i (axis=1 reduces over j); g = 1 / (2 sigma^2).
GAUSSIAN_PRODUCT = Genred(
    "Exp(-G * SqDist(X, Y)) * B",
    ["X = Vi(1)", "Y = Vj(1)", "B = Vj(1)", "G = Pm(1)"],
    reduction_op="Sum",
    axis=1,
)


def truth(x):
    """The function being learned."""
    return np.sin(3.0 * x) + 0.3 * np.cos(11.0 * x) + 0.2 * x


def conjugate_gradients(apply, rhs, tolerance, max_iterations):
    """Solve apply(v) = rhs for a symmetric positive definite operator, from v = 0; returns the
    solution and the relative residual |rhs - apply(v)| / |rhs| after each iteration (CG
    minimises the error in the operator's norm, so this residual need not fall at every step)."""
    solution = np.zeros_like(rhs)
    residual = rhs.copy()
    direction = residual.copy()
    rr = float(np.sum(residual * residual))
    norm_rhs = np.sqrt(rr)
    history = []
    for _ in range(max_iterations):
        product = apply(direction)
        step = rr / float(np.sum(direction * product))
        solution += step * direction
        residual -= step * product
        rr_new = float(np.sum(residual * residual))
        history.append(np.sqrt(rr_new) / norm_rhs)
        if history[-1] < tolerance:
            break
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return solution, history


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="training samples (default 5000)")
    parser.add_argument("--sigma", type=float, default=0.1, help="kernel width (default 0.1)")
    parser.add_argument("--ridge", type=float, default=1.0,
                        help="ridge lambda added to the kernel matrix's diagonal (default 1.0)")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="standard deviation of the noise on the samples (default 0.3)")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="CG stops at this relative residual (default 1e-6)")
    parser.add_argument("--max-iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                        help="folder for kernel_ridge.png (default: the current folder)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-2.0, 2.0, (args.n, 1))
    y = truth(x) + args.noise * rng.standard_normal((args.n, 1))
    gamma = np.array([1.0 / (2.0 * args.sigma**2)])

    def regularised_kernel(p):
        return GAUSSIAN_PRODUCT(x, x, p, gamma) + args.ridge * p

    start = time.perf_counter()
    alpha, residuals = conjugate_gradients(regularised_kernel, y, args.tolerance,
                                           args.max_iterations)
    elapsed = time.perf_counter() - start
    print(f"N = {args.n}, sigma = {args.sigma}, lambda = {args.ridge}, noise = {args.noise}")
    for k, r in enumerate(residuals, start=1):
        print(f"CG iteration {k:3d}  relative residual {r:.3e}")
    print(f"CG: {len(residuals)} iterations in {elapsed:.2f} s "
          f"({elapsed / len(residuals) * 1e3:.1f} ms per product with the {args.n} x {args.n} "
          f"kernel matrix)")
    # The residual CG tracks by recurrence, checked against one more product.
    true_residual = np.linalg.norm(y - regularised_kernel(alpha)) / np.linalg.norm(y)
    print(f"residual recomputed from the solution: {true_residual:.3e}")

    if args.n <= 3000:
        # The same system solved densely by numpy.
        dense = np.exp(-gamma[0] * (x - x.T) ** 2) + args.ridge * np.eye(args.n)
        exact = np.linalg.solve(dense, y)
        print(f"alpha vs dense numpy solve: relative difference "
              f"{np.linalg.norm(alpha - exact) / np.linalg.norm(exact):.2e}")

    x_test = rng.uniform(-2.0, 2.0, (max(args.n // 4, 1), 1))
    fit = GAUSSIAN_PRODUCT(x_test, x, alpha, gamma)
    test_rmse = float(np.sqrt(np.mean((fit - truth(x_test)) ** 2)))
    print(f"test RMSE against the noiseless function: {test_rmse:.4f} "
          f"(noise on the samples: {args.noise})")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "kernel_ridge.png"
    grid = np.linspace(-2.0, 2.0, 1000)[:, None]
    fig, (ax, ax_cg) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    shown = rng.permutation(args.n)[:2000]
    ax.scatter(x[shown, 0], y[shown, 0], s=2, c="lightgray", label="noisy samples")
    ax.plot(grid[:, 0], truth(grid)[:, 0], c="black", lw=1.5, label="truth")
    ax.plot(grid[:, 0], GAUSSIAN_PRODUCT(grid, x, alpha, gamma)[:, 0], c="tab:red", lw=1.5,
            label=f"fit (test RMSE {test_rmse:.3f})")
    ax.set_title(f"Gaussian kernel ridge regression, N = {args.n}")
    ax.legend(loc="upper left", fontsize=8)
    ax_cg.semilogy(np.arange(1, len(residuals) + 1), residuals, marker=".")
    ax_cg.set_xlabel("CG iteration")
    ax_cg.set_ylabel("relative residual")
    ax_cg.set_title("CG, products by keops_rs.Genred")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
