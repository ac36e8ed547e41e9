"""Diffusion curvature (Bhaskar et al., 2022) of point clouds sampled from surfaces, with
``keops_rs.linalg`` and one symbolic reduction: no N x N matrix is ever formed.

A random walk on a point cloud stays close to its start more often where the surface curves
positively (a sphere folds the neighbourhood back onto the ball around the start) and less often
where it curves negatively (a saddle spreads it out). Diffusion curvature measures this
"laziness": the probability that a t-step walk started at x_i ends within distance r of x_i,

    laziness_i = sum_{j : |x_i - x_j| < r} P^t[i, j],

where P = D_a^-1 K_a is the diffusion-map random walk of the Gaussian kernel
K_ij = exp(-|x_i - x_j|^2 / eps) with the density correction alpha = 1 (K_a = D^-1 K D^-1,
D and D_a the degrees of K and K_a). P^t is dense, but with the top k eigenpairs of the
symmetric S = D_a^-1/2 K_a D_a^-1/2 (eigenvalues lambda, vectors u) it is

    P^t[i, j] ~= sum_k lambda_k^t psi_k(i) phi_k(j),   psi = D_a^-1/2 u,  phi = D_a^1/2 u,

so the laziness is one Sum reduction of Step(r^2 - |x_i - x_j|^2) (a_i | b_j) with
a_i = lambda^t psi(i) and b_j = phi(j), k numbers per point on each side. The eigenpairs come
from Lanczos (``linalg.eigsh``), whose products with S are keops-rs Gaussian sums.

The curvature estimate is the laziness minus that of a flat disc sampled at the same density
with the same parameters. Four surfaces of area 4 pi (so that N points give one density): the
unit sphere (positive), a disc of radius 2 (zero), the saddle z = (x^2 - y^2) / 2 (negative at
its centre) and a torus of tube radius 0.4 around a circle of radius 1 / (0.4 pi) (negative on
the inner ring, positive on the outer one). The script prints the mean curvature of each of these
regions, checks the sign pattern (exit status 1 if it is wrong) and plots the clouds coloured by
curvature and the diffusion map of the torus.

    python examples/python/diffusion_curvature.py --n 20000 --out /tmp/curvature
"""

import argparse
import pathlib
import sys
import time

import matplotlib
import numpy as np

from keops_rs import Kernel
from keops_rs.linalg import KernelOperator, eigsh, normalize

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless back end)
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

# (K b)_i = sum_j exp(-g |x_i - x_j|^2) b_j with g = 1 / eps: the operator Lanczos multiplies by.
GAUSSIAN = """
kernel gaussian_product {
    x = Vi(3)
    y = Vj(3)
    b = Vj(1)
    g = Pm(1)
    Sum_Reduction(Exp(-g * SqDist(x, y)) * b, 0)
}
"""

# sum over the points y_j of the ball of radius sqrt(r2) around x_i of <a_i, b_j>: with
# a = lambda^t psi and b = phi, the probability that the walk from x_i ends in that ball.
BALL_RETURN = """
kernel ball_return {{
    x = Vi(3)
    y = Vj(3)
    a = Vi({k})
    b = Vj({k})
    r2 = Pm(1)
    Sum_Reduction(Step(r2 - SqDist(x, y)) * (a | b), 0)
}}
"""

# Area 4 pi^2 R r = 4 pi. The tube must be wide next to the walk's reach: around a thinner one
# (r = 1 / pi, R = 1) the walk goes round the tube, is nearly one-dimensional and lazier
# everywhere, and the inner ring came out positive too.
TUBE_RADIUS = 0.4
TORUS_RADIUS = 1.0 / (np.pi * TUBE_RADIUS)
# The saddle's graph over the disc of this radius has area 2 pi / 3 ((1 + rho^2)^(3/2) - 1) = 4 pi.
SADDLE_RADIUS = np.sqrt(7.0 ** (2.0 / 3.0) - 1.0)
DISC_RADIUS = 2.0
# The flat reference is taken where the walk and the ball (together about 1.2 across at the
# default parameters) stay clear of the disc's rim, whose reflections make the walk lazier.
DISC_INTERIOR = 0.8


def sphere(rng, n):
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def disc(rng, n):
    radius = DISC_RADIUS * np.sqrt(rng.uniform(0.0, 1.0, n))
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), np.zeros(n)], axis=1)


def saddle(rng, n):
    """Uniform in area on the graph of (x^2 - y^2) / 2: uniform on the disc below it, kept with
    probability proportional to the area element sqrt(1 + x^2 + y^2)."""
    kept = np.empty((0, 2))
    largest = np.sqrt(1.0 + SADDLE_RADIUS**2)
    while kept.shape[0] < n:
        uv = disc(rng, 2 * n)[:, :2] * (SADDLE_RADIUS / DISC_RADIUS)
        keep = rng.uniform(0.0, largest, 2 * n) < np.sqrt(1.0 + (uv**2).sum(axis=1))
        kept = np.concatenate([kept, uv[keep]])
    u, v = kept[:n, 0], kept[:n, 1]
    return np.stack([u, v, (u**2 - v**2) / 2.0], axis=1)


def torus(rng, n):
    """Uniform in area: the angles uniform, kept with probability proportional to the area
    element (R + r cos phi) (uniform angles would crowd the inner ring)."""
    kept = np.empty((0, 2))
    while kept.shape[0] < n:
        angles = rng.uniform(0.0, 2.0 * np.pi, (2 * n, 2))
        element = TORUS_RADIUS + TUBE_RADIUS * np.cos(angles[:, 1])
        keep = rng.uniform(0.0, TORUS_RADIUS + TUBE_RADIUS, 2 * n) < element
        kept = np.concatenate([kept, angles[keep]])
    theta, phi = kept[:n, 0], kept[:n, 1]
    ring = TORUS_RADIUS + TUBE_RADIUS * np.cos(phi)
    return np.stack([ring * np.cos(theta), ring * np.sin(theta), TUBE_RADIUS * np.sin(phi)], axis=1)


def axis_distance(x):
    return np.linalg.norm(x[:, :2], axis=1)


# name, sampler, the elevation it is viewed from, and the regions where the sign is judged:
# (name, mask, expected sign, 0 for about 0).
SURFACES = [
    ("plane", disc, 35, lambda x: [("centre", axis_distance(x) < 0.3, 0)]),
    ("sphere", sphere, 20, lambda x: [("all", np.ones(len(x), bool), 1)]),
    ("saddle", saddle, 30, lambda x: [("centre", axis_distance(x) < 0.3, -1)]),
    ("torus", torus, 55,
     lambda x: [("inner ring", axis_distance(x) < TORUS_RADIUS - TUBE_RADIUS / 2, -1),
                ("outer ring", axis_distance(x) > TORUS_RADIUS + TUBE_RADIUS / 2, 1)]),
]


def diffusion_laziness(x, eps, t, radius, k, tol):
    """The laziness of every point, with the walk's eigenpairs (the EigResult, psi) and the
    normalised operator: 2 kernel passes for the degrees, eig.products for Lanczos, 1 for the
    ball."""
    # One cloud against itself: every product walks each unordered pair once.
    operator = KernelOperator(GAUSSIAN, same={"y": "x"}, x=x,
                              g=np.array([1.0 / eps], dtype=x.dtype))
    symmetric = normalize(operator, "alpha=1,sym")
    eig = eigsh(symmetric, k=k, tol=tol)
    psi = symmetric.random_walk_eigenvectors(eig.vectors)
    # psi = D_a^-1/2 u with u orthonormal, so P^t = D_a^-1/2 U Lambda^t U^T D_a^1/2
    # = psi Lambda^t (D_a psi)^T.
    phi = symmetric.symmetric_degrees[:, None] * psi
    a = psi * eig.values**t
    ball = Kernel(BALL_RETURN.format(k=k))
    laziness = ball.call_same({"y": "x"}, x, x, a.astype(x.dtype), phi.astype(x.dtype),
                              np.array([radius**2], dtype=x.dtype))[:, 0]
    return laziness, eig, psi, symmetric


def dense_check(x, eps, t, radius, k, laziness, eig, symmetric):
    """The walk, its eigenpairs and the laziness again from dense N x N matrices (small N)."""
    x = x.astype(np.float64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / eps)
    q = kernel.sum(axis=1)
    k_a = kernel / np.outer(q, q)
    degrees = k_a.sum(axis=1)
    walk_t = np.linalg.matrix_power(k_a / degrees[:, None], t)
    values, vectors = np.linalg.eigh(k_a / np.sqrt(np.outer(degrees, degrees)))
    # Every eigenpair through the same psi and phi as diffusion_laziness: P^t exactly.
    psi = symmetric.random_walk_eigenvectors(vectors)
    phi = symmetric.symmetric_degrees[:, None] * psi
    identity = np.abs((psi * values**t) @ phi.T - walk_t).max() / np.abs(walk_t).max()
    ball = d2 < radius**2
    top = np.argsort(values)[::-1][:k]
    truncated = ((psi[:, top] * values[top] ** t) @ phi[:, top].T * ball).sum(axis=1)
    exact = (walk_t * ball).sum(axis=1)
    print(f"  dense check: P^t = Psi diag(lambda^t) Phi^T over all {len(x)}^2 entries: "
          f"max relative difference {identity:.1e}")
    print(f"  dense check: top {k} eigenvalues vs numpy: max difference "
          f"{np.abs(eig.values - values[top]).max():.1e}; laziness vs numpy's top {k}: "
          f"max difference {np.abs(laziness - truncated).max():.1e}")
    moved = np.abs(exact - truncated)
    print(f"  dense check: keeping the top {k} eigenpairs moves the laziness by "
          f"{moved.mean():.1e} on average, {moved.max():.1e} at most (a bias set by k, eps and "
          f"t, hardly by N)")


def scatter_3d(ax, x, colour, norm, title, elevation=30):
    points = ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=colour, s=2, cmap="RdBu_r", norm=norm,
                        linewidths=0)
    ax.set_box_aspect(np.ptp(x, axis=0) + 1e-3)
    ax.view_init(elev=elevation, azim=-60)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return points


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100000,
                        help="points per surface, all of area 4 pi (default 100000)")
    parser.add_argument("--k", type=int, default=20,
                        help="eigenpairs of the diffusion operator (default 20)")
    parser.add_argument("--eps", type=float, default=0.05,
                        help="kernel bandwidth: exp(-|x - y|^2 / eps) (default 0.05)")
    parser.add_argument("--t", type=int, default=16, help="steps of the walk (default 16)")
    parser.add_argument("--radius", type=float, default=0.6,
                        help="radius of the ball the walk must return to (default 0.6)")
    parser.add_argument("--tol", type=float, default=1e-6,
                        help="Lanczos tolerance on ||S y - theta y|| (default 1e-6)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="precision of the points and of the kernels (default float32)")
    parser.add_argument("--plot-points", type=int, default=15000,
                        help="points per surface drawn in the plots (default 15000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                        help="folder for diffusion_curvature.png and diffusion_map.png "
                             "(default: the current folder)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    dtype = np.dtype(args.dtype)
    print(f"diffusion curvature: N = {args.n} per surface, eps = {args.eps}, t = {args.t}, "
          f"ball radius {args.radius}, k = {args.k} eigenpairs, {dtype}")
    results = {}
    reference = None
    total_seconds, total_passes = 0.0, 0
    for name, sample, elevation, regions in SURFACES:
        x = sample(rng, args.n).astype(dtype)
        start = time.perf_counter()
        laziness, eig, psi, symmetric = diffusion_laziness(x, args.eps, args.t, args.radius,
                                                           args.k, args.tol)
        elapsed = time.perf_counter() - start
        passes = 2 + eig.products + 1
        total_seconds += elapsed
        total_passes += passes
        if reference is None:
            # The disc comes first: the laziness of its interior is every surface's reference.
            interior = axis_distance(x) < DISC_INTERIOR
            reference = float(np.median(laziness[interior]))
        curvature = laziness - reference
        judged = [(region, mask, sign, float(curvature[mask].mean()))
                  for region, mask, sign in regions(x)]
        print(f"{name:6s} N = {args.n}: {elapsed:.2f} s, {passes} kernel passes (2 degrees, "
              f"{eig.products} Lanczos products, 1 ball reduction); Lanczos "
              f"{'converged' if eig.converged else 'NOT converged'} after {eig.restarts} "
              f"restarts, lambda_2..{args.k} = {eig.values[1]:.4f}..{eig.values[-1]:.4f}; "
              f"laziness {laziness.mean():.4f} on average; curvature "
              + ", ".join(f"{region} {value:+.4f}" for region, _, _, value in judged))
        if name == "plane":
            print(f"  flat reference: median laziness {reference:.4f} over the "
                  f"{int(interior.sum())} points within {DISC_INTERIOR} of the disc's centre")
            if args.n <= 2000:
                dense_check(x, args.eps, args.t, args.radius, args.k, laziness, eig, symmetric)
        results[name] = (x, curvature, judged, elevation, eig, psi)
    print(f"all four: {total_seconds:.1f} s, {total_passes} kernel passes of {args.n} x "
          f"{args.n} pairs")

    # The sphere's curvature is the same everywhere, so its mean is a precise yardstick for one
    # unit of curvature at these parameters; "about 0" is within half of it. The laziness of a
    # point is a Monte Carlo sum over the ~N r^2 / 4 points of its ball, so at a few thousand
    # points the plane's centre wanders by about 0.005.
    unit = results["sphere"][2][0][3]
    ok = True
    for name, (_, _, judged, _, _, _) in results.items():
        for region, mask, sign, value in judged:
            if sign == 0:
                right = abs(value) < 0.5 * abs(unit)
                said = "about 0" if right else "not about 0"
                expected = f"about 0: |c| < {0.5 * abs(unit):.4f}"
            else:
                right = np.sign(value) == sign
                said = "positive" if value > 0 else "negative"
                expected = "positive" if sign > 0 else "negative"
            ok &= bool(right)
            print(f"curvature {name} {region}: {value:+.5f} ({int(mask.sum())} points; {said}, "
                  f"expected {expected})")
    print(f"sign pattern: {'ok' if ok else 'WRONG'}")

    args.out.mkdir(parents=True, exist_ok=True)
    # Colour limits from the judged regions: the rims of the disc and the saddle, where the walk
    # has fewer ways out and is much lazier, would wash out everything else.
    limit = 1.25 * max(abs(value) for _, (_, _, judged, _, _, _) in results.items()
                       for _, _, _, value in judged)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    fig = plt.figure(figsize=(12, 10))
    for index, (name, (x, curvature, judged, elevation, _, _)) in enumerate(results.items(), 1):
        shown = rng.permutation(len(x))[: args.plot_points]
        ax = fig.add_subplot(2, 2, index, projection="3d")
        points = scatter_3d(ax, x[shown], curvature[shown], norm,
                            f"{name}: " + ", ".join(f"{region} {value:+.3f}"
                                                    for region, _, _, value in judged),
                            elevation)
    fig.colorbar(points, ax=fig.axes, shrink=0.6, extend="both",
                 label="diffusion curvature (laziness - flat reference)")
    fig.suptitle(f"Diffusion curvature, N = {args.n} per surface, eps = {args.eps}, "
                 f"t = {args.t}, ball radius {args.radius}, k = {args.k}")
    path = args.out / "diffusion_curvature.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")

    # The torus's diffusion map: the first nontrivial walk eigenvectors scaled by lambda^t.
    x, curvature, _, _, eig, psi = results["torus"]
    shown = rng.permutation(len(x))[: args.plot_points]
    embedding = psi[:, 1:4] * eig.values[1:4] ** args.t
    fig = plt.figure(figsize=(12, 5.5))
    ax = fig.add_subplot(1, 2, 1)
    ax.scatter(embedding[shown, 0], embedding[shown, 1], c=curvature[shown], s=2,
               cmap="RdBu_r", norm=norm, linewidths=0)
    ax.set_aspect("equal")
    ax.set_xlabel("lambda_2^t psi_2")
    ax.set_ylabel("lambda_3^t psi_3")
    ax.set_title("torus: diffusion map, coordinates 2 and 3", fontsize=10)
    ax = fig.add_subplot(1, 2, 2, projection="3d")
    points = scatter_3d(ax, embedding[shown], curvature[shown], norm,
                        "torus: diffusion map, coordinates 2 to 4", 20)
    fig.colorbar(points, ax=fig.axes, shrink=0.8, extend="both", label="diffusion curvature")
    fig.suptitle(f"Diffusion map of the torus (t = {args.t}), coloured by curvature")
    path = args.out / "diffusion_map.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
