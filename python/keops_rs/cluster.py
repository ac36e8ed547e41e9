"""``keops_rs.cluster``: block-sparse reductions made from clusters, as ``pykeops.numpy.cluster``.

Points are put in cubic cells (``grid_cluster``), sorted so that every cell is contiguous
(``sort_clusters``), summarised by their ranges and centroids (``cluster_ranges_centroids``);
a boolean matrix says which pairs of cells interact (for a Gaussian, centroids closer than a few
bandwidths plus the cells' diameters), and ``from_matrix`` turns it into the 6-tuple that
``Genred(...)(..., ranges=...)`` and ``Kernel.call_ranges`` take: the reduction then visits only
the kept blocks, and its cost follows their number of pairs.

    x_labels = grid_cluster(x, eps); y_labels = grid_cluster(y, eps)
    x_ranges, x_centroids, _ = cluster_ranges_centroids(x, x_labels)
    y_ranges, y_centroids, _ = cluster_ranges_centroids(y, y_labels)
    x, x_labels = sort_clusters(x, x_labels); y, y_labels = sort_clusters(y, y_labels)
    keep = ((x_centroids[:, None, :] - y_centroids[None, :, :]) ** 2).sum(-1) < cutoff ** 2
    ranges = from_matrix(x_ranges, y_ranges, keep)
"""

import numpy as np

__all__ = ["grid_cluster", "sort_clusters", "cluster_ranges", "cluster_ranges_centroids",
           "cluster_centroids", "from_matrix"]


def grid_cluster(x, size):
    """The label of the cubic cell of side ``size`` holding each point of ``x`` (``(N, D)``):
    labels ``0..C-1``, cells numbered in lexicographic order of their integer coordinates."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    size = np.asarray(size, dtype=np.float64)
    cells = np.floor((x - x.min(axis=0)) / size).astype(np.int64)
    _, labels = np.unique(cells, axis=0, return_inverse=True)
    return labels.reshape(-1).astype(np.int64)


def sort_clusters(x, labels):
    """``x`` and ``labels`` sorted by label (stable), so that each cluster is contiguous. As
    in KeOps, ``x`` may be a tuple (or list) of arrays with as many rows: each is sorted the
    same way, and a tuple comes back."""
    order = np.argsort(labels, kind="stable")
    if isinstance(x, (tuple, list)):
        return tuple(np.asarray(a)[order] for a in x), np.asarray(labels)[order]
    return np.asarray(x)[order], np.asarray(labels)[order]


def cluster_ranges(labels, nclusters=None):
    """``(C, 2)`` int64: cluster ``c`` is ``[start, end)`` of the points sorted by label."""
    labels = np.asarray(labels)
    nclusters = int(labels.max()) + 1 if nclusters is None else nclusters
    counts = np.bincount(labels, minlength=nclusters)
    ends = np.cumsum(counts)
    return np.stack([ends - counts, ends], axis=1).astype(np.int64)


def cluster_centroids(x, labels, nclusters=None, weights=None):
    """The (weighted) mean point of each cluster, ``(C, D)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    labels = np.asarray(labels)
    nclusters = int(labels.max()) + 1 if nclusters is None else nclusters
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    sums = np.zeros((nclusters, x.shape[1]))
    np.add.at(sums, labels, x * w[:, None])
    total = np.bincount(labels, weights=w, minlength=nclusters)
    return sums / np.maximum(total, np.finfo(float).tiny)[:, None]


def cluster_ranges_centroids(x, labels, weights=None):
    """``(ranges, centroids, weights of the clusters)`` for ``x`` clustered by ``labels``:
    the ranges hold once ``x`` is sorted by label (``sort_clusters``)."""
    labels = np.asarray(labels)
    nclusters = int(labels.max()) + 1
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    return (cluster_ranges(labels, nclusters), cluster_centroids(x, labels, nclusters, weights),
            np.bincount(labels, weights=w, minlength=nclusters))


def _sparse(ranges_rows, ranges_cols, keep):
    # For each row cluster, the column ranges it keeps, adjacent ones merged.
    slices, red = [], []
    for r in range(keep.shape[0]):
        for c in np.nonzero(keep[r])[0]:
            start, end = int(ranges_cols[c, 0]), int(ranges_cols[c, 1])
            if start == end:
                continue
            if len(red) > (slices[-1] if slices else 0) and red[-1][1] == start:
                red[-1] = (red[-1][0], end)
            else:
                red.append((start, end))
        slices.append(len(red))
    return (np.asarray(slices, dtype=np.int64),
            np.asarray(red, dtype=np.int64).reshape(-1, 2))


def from_matrix(ranges_i, ranges_j, keep):
    """KeOps's 6-tuple ``(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)``
    from the cluster ranges of both point clouds and ``keep`` (``(Ci, Cj)`` booleans: which
    blocks of pairs the reduction visits), for a reduction over j and over i alike."""
    ranges_i = np.asarray(ranges_i, dtype=np.int64)
    ranges_j = np.asarray(ranges_j, dtype=np.int64)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(ranges_i), len(ranges_j)):
        raise ValueError(f"keep has shape {keep.shape}; expected ({len(ranges_i)}, {len(ranges_j)})")
    slices_i, redranges_j = _sparse(ranges_i, ranges_j, keep)
    slices_j, redranges_i = _sparse(ranges_j, ranges_i, keep.T)
    return ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i
