"""Block-sparse reductions (``ranges``): Genred and Kernel.call_ranges against the dense
reduction restricted to the kept blocks, the cluster helpers, and malformed ranges."""

import numpy as np
import pytest

import keops_rs
from keops_rs import Genred
from keops_rs.cluster import cluster_ranges_centroids, from_matrix, grid_cluster, sort_clusters


def clustered(rng, n, m):
    x, y = rng.random((n, 2)), rng.random((m, 2))
    xl, yl = grid_cluster(x, 0.1), grid_cluster(y, 0.1)
    xr, xc, _ = cluster_ranges_centroids(x, xl)
    yr, yc, _ = cluster_ranges_centroids(y, yl)
    x, xl = sort_clusters(x, xl)
    y, yl = sort_clusters(y, yl)
    keep = ((xc[:, None, :] - yc[None, :, :]) ** 2).sum(-1) < 0.25**2
    return x, xl, y, yl, from_matrix(xr, yr, keep), keep


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_genred_with_ranges_is_the_dense_reduction_on_the_kept_blocks(rng, dtype):
    x, xl, y, yl, ranges, keep = clustered(rng, 1500, 1300)
    x, y = x.astype(dtype), y.astype(dtype)
    b = rng.random((len(y), 1)).astype(dtype)
    mask = keep[xl][:, yl]
    assert 0.05 < mask.mean() < 0.6
    k = np.exp(-((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1) / 0.01)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    # Over j (pykeops axis=1) and over i (axis=0, the second half of the 6-tuple).
    g = Genred("Exp(-SqDist(x, y) / s) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "s = Pm(1)"], axis=1)
    got = g(x, y, b, np.array([0.01], dtype=dtype), ranges=ranges)
    np.testing.assert_allclose(got, (k * mask) @ b, rtol=tol, atol=tol)
    a = rng.random((len(x), 1)).astype(dtype)
    g0 = Genred("Exp(-SqDist(x, y) / s) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vi(1)", "s = Pm(1)"], axis=0)
    got = g0(x, y, a, np.array([0.01], dtype=dtype), ranges=ranges)
    np.testing.assert_allclose(got, (k * mask).T @ a, rtol=tol, atol=tol)
    # An arg-reduction: the nearest kept point.
    d2 = ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)
    nearest = Genred("SqDist(x, y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="ArgMin", axis=1)
    got = nearest(x, y, ranges=ranges).reshape(-1)
    want = np.where(mask, d2, np.inf).argmin(1)
    assert (got == want).mean() > 0.999


def test_kernel_call_ranges_and_malformed_ranges(rng):
    k = keops_rs.Kernel("kernel s { x = Vi(2) y = Vj(2) b = Vj(1) Sum_Reduction(Exp(-SqDist(x, y)) * b, 0) }")
    x, y, b = rng.random((10, 2)), rng.random((20, 2)), rng.random((20, 1))
    out = k.call_ranges(([(0, 4), (6, 10)], [1, 3], [(0, 5), (2, 3), (11, 20)]), x, y, b)
    full = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1))
    mask = np.zeros((10, 20), bool)
    mask[0:4, 0:5] = True
    mask[6:10, 2:3] = True
    mask[6:10, 11:20] = True
    np.testing.assert_allclose(out, (full * mask) @ b, rtol=1e-12)
    with pytest.raises(ValueError, match=r"ranges: ranges_i\[0\]"):
        k.call_ranges(([(0, 11)], [1], [(0, 5)]), x, y, b)
    with pytest.raises(ValueError, match=r"redranges_j\[1\].*sorted and disjoint"):
        k.call_ranges(([(0, 5)], [2], [(5, 9), (2, 6)]), x, y, b)
    g = Genred("SqDist(x, y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Min", axis=1)
    with pytest.raises(ValueError, match="6-tuple"):
        g(x, y, ranges=([(0, 5)], [1], [(0, 5)]))


def test_lazytensor_reductions_take_ranges(rng):
    x, xl, y, yl, ranges, keep = clustered(rng, 700, 500)
    b = rng.random((len(y), 1))
    mask = keep[xl][:, yl]
    k = np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 0.01) * mask
    x_i, y_j = keops_rs.LazyTensor(x[:, None, :]), keops_rs.LazyTensor(y[None, :, :])
    b_j = keops_rs.LazyTensor(b[None, :, :])
    K = (-((x_i - y_j) ** 2).sum(-1) / 0.01).exp() * b_j
    np.testing.assert_allclose(K.sum(dim=1, ranges=ranges), k @ b, rtol=1e-10, atol=1e-12)
    # Over i, and as an attribute of the LazyTensor (pykeops's `K.ranges = ...`).
    K.ranges = ranges
    a = rng.random((len(x), 1))
    a_i = keops_rs.LazyTensor(a[:, None, :])
    Ki = (-((x_i - y_j) ** 2).sum(-1) / 0.01).exp() * a_i
    Ki.ranges = ranges
    np.testing.assert_allclose(Ki.sum(dim=0), k.T @ a, rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_jax_genred_with_ranges_is_differentiable(rng, dtype):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # as test_jax.py: float64 arrays stay float64
    import jax.numpy as jnp
    from keops_rs.jax import Genred as JaxGenred

    x, xl, y, yl, ranges, keep = clustered(rng, 600, 450)
    x, y = x.astype(dtype), y.astype(dtype)
    b = rng.random((len(y), 1)).astype(dtype)
    mask = keep[xl][:, yl]
    g = JaxGenred("Exp(-SqDist(x,y)*s)*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "s = Pm(1)"],
                  axis=1)
    s = np.array([100.0], dtype=dtype)

    def loss(x, y, b, s):
        return jnp.sum(g(x, y, b, s, ranges=ranges) ** 2)

    def dense(x, y, b, s):
        k = jnp.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * s[0]) * mask
        return jnp.sum((k @ b) ** 2)

    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(jax.jit(loss)(x, y, b, s), dense(x, y, b, s), **tol)
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, y, b, s)
    want = jax.grad(dense, argnums=(0, 1, 2, 3))(x, y, b, s)
    for a, w, name in zip(got, want, "xybs"):
        # Sums of terms of both signs: the f32 error is relative to the largest entries.
        scale = dict(atol=tol["rtol"] * float(np.abs(w).max()))
        np.testing.assert_allclose(a, w, err_msg=f"d{name}", **{**tol, **scale})
    # Under vmap, batch after batch, each with the pattern.
    bs = np.stack([b, 2 * b])
    out = jax.vmap(lambda bb: g(x, y, bb, s, ranges=ranges))(bs)
    np.testing.assert_allclose(out[1], 2 * out[0], rtol=1e-5)


def test_jax_ranges_must_be_concrete(rng):
    jax = pytest.importorskip("jax")
    from keops_rs.jax import Genred as JaxGenred

    x, xl, y, yl, ranges, keep = clustered(rng, 50, 40)
    g = JaxGenred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], axis=1)
    traced = jax.jit(lambda r: g(x, y, ranges=(r,) + tuple(ranges[1:])))
    with pytest.raises(TypeError, match="concrete"):
        traced(ranges[0])
