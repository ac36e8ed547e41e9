"""K-nearest-neighbour classification of a synthetic 2-D dataset with ``keops_rs.LazyTensor``.

The training set is a few Gaussian blobs, one class each. For every query point the K nearest
training points come from one ``argKmin`` reduction over the symbolic N x M matrix of squared
distances (pykeops style: nothing N x M is allocated), and the predicted class is the majority
vote of their labels. The script prints the accuracy on a held-out test set and plots the
decision regions on a grid, with the training points on top.

    python examples/python/knn.py --n 5000 --k 10 --out /tmp/knn
"""

import argparse
import pathlib
import time

import matplotlib
import numpy as np

from keops_rs import LazyTensor

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless back end)


def blob_centres(classes):
    """`classes` centres evenly spaced on the unit circle."""
    angles = 2.0 * np.pi * np.arange(classes) / classes
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def blobs(n, classes, spread, rng):
    """n points in 2-D around the blob centres, with their labels."""
    centres = blob_centres(classes)
    labels = rng.integers(0, classes, n)
    points = centres[labels] + spread * rng.standard_normal((n, 2))
    return points, labels


def knn_predict(train, labels, queries, k, classes):
    """The majority label among the k nearest training points of every query (ties: the
    smallest label)."""
    x_i = LazyTensor(queries[:, None, :])  # (Nq, 1, 2): one row per query
    y_j = LazyTensor(train[None, :, :])  # (1, N, 2): reduced over
    squared_distances = ((x_i - y_j) ** 2).sum(-1)
    nearest = squared_distances.argKmin(k, dim=1)  # (Nq, k) int64, nearest first
    votes = np.zeros((queries.shape[0], classes), dtype=np.int64)
    np.add.at(votes, (np.arange(queries.shape[0])[:, None], labels[nearest]), 1)
    return votes.argmax(axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="training points (default 5000)")
    parser.add_argument("--k", type=int, default=10, help="neighbours that vote (default 10)")
    parser.add_argument("--classes", type=int, default=4, help="number of blobs (default 4)")
    parser.add_argument("--spread", type=float, default=0.35,
                        help="standard deviation of each blob; the centres are 1 from the origin "
                             "(default 0.35)")
    parser.add_argument("--grid", type=int, default=300,
                        help="grid points per side for the decision regions (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                        help="folder for knn.png (default: the current folder)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    train, train_labels = blobs(args.n, args.classes, args.spread, rng)
    test, test_labels = blobs(max(args.n // 4, 1), args.classes, args.spread, rng)

    start = time.perf_counter()
    predicted = knn_predict(train, train_labels, test, args.k, args.classes)
    elapsed = time.perf_counter() - start
    accuracy = float(np.mean(predicted == test_labels))
    print(f"{args.classes} classes, {args.n} training points, {test.shape[0]} test points, "
          f"K = {args.k}")
    print(f"test accuracy: {accuracy:.4f} ({elapsed * 1e3:.1f} ms for the test set)")
    # The blobs have equal weights and spreads, so the nearest centre is the best possible rule:
    # the accuracy K-NN approaches as the training set grows.
    centres = blob_centres(args.classes)
    best = np.argmin(((test[:, None, :] - centres[None, :, :]) ** 2).sum(-1), axis=1)
    print(f"nearest-centre (Bayes) accuracy: {np.mean(best == test_labels):.4f}")
    # The neighbours against a dense numpy search on a few queries.
    few = test[:200]
    dense = np.sort(((few[:, None, :] - train[None, :, :]) ** 2).sum(-1), axis=1)[:, : args.k]
    x_i, y_j = LazyTensor(few[:, None, :]), LazyTensor(train[None, :, :])
    ours = ((x_i - y_j) ** 2).sum(-1).Kmin(args.k, dim=1)
    print(f"K smallest distances vs dense numpy ({few.shape[0]} queries): "
          f"max difference {np.max(np.abs(ours - dense)):.2e}")

    # Decision regions: one more argKmin over a grid covering the data.
    low, high = train.min(axis=0) - 0.3, train.max(axis=0) + 0.3
    gx, gy = np.meshgrid(np.linspace(low[0], high[0], args.grid),
                         np.linspace(low[1], high[1], args.grid))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    start = time.perf_counter()
    regions = knn_predict(train, train_labels, grid, args.k, args.classes).reshape(gx.shape)
    elapsed = time.perf_counter() - start
    pairs = grid.shape[0] * args.n
    print(f"decision regions: {grid.shape[0]} grid points x {args.n} training points in "
          f"{elapsed * 1e3:.1f} ms ({pairs / elapsed:.3g} pairs/s)")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "knn.png"
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.contourf(gx, gy, regions, levels=np.arange(args.classes + 1) - 0.5, cmap=cmap,
                vmin=-0.5, vmax=9.5, alpha=0.3)
    ax.scatter(train[:, 0], train[:, 1], c=train_labels, cmap=cmap, vmin=-0.5, vmax=9.5, s=3)
    wrong = predicted != test_labels
    ax.scatter(test[wrong, 0], test[wrong, 1], marker="x", c="black", s=15,
               label=f"misclassified test points ({int(wrong.sum())})")
    ax.set_title(f"{args.k}-NN decision regions (keops_rs.LazyTensor.argKmin), "
                 f"accuracy {accuracy:.3f}", fontsize=10)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
