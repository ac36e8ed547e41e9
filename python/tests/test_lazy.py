"""LazyTensor against dense numpy float64 computations."""

import numpy as np
import pytest

from keops_rs import LazyTensor, Vi, Vj, Pm
from conftest import sqdist


def clouds(rng, n=29, m=17, d=3, dtype=np.float64):
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((m, d)).astype(dtype)


def test_gaussian_matvec(rng):
    x, y = clouds(rng)
    b = rng.standard_normal((17, 2))
    x_i = LazyTensor(x[:, None, :])
    y_j = LazyTensor(y[None, :, :])
    K = (-((x_i - y_j) ** 2).sum(-1) / 2.0).exp()
    out = K @ b
    assert out.shape == (29, 2)
    np.testing.assert_allclose(out, np.exp(-sqdist(x, y) / 2) @ b, rtol=1e-12)
    v = K @ b[:, 0]
    assert v.shape == (29,)
    np.testing.assert_allclose(v, np.exp(-sqdist(x, y) / 2) @ b[:, 0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reductions_over_i_and_j(rng, dtype):
    x, y = clouds(rng, dtype=dtype)
    D = LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
    d = sqdist(x, y)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    out = D.sum(dim=1)
    assert out.dtype == dtype and out.shape == (29, 1)
    np.testing.assert_allclose(out[:, 0], d.sum(1), rtol=tol)
    np.testing.assert_allclose(D.sum(dim=0)[:, 0], d.sum(0), rtol=tol)
    np.testing.assert_allclose(D.min(dim=1)[:, 0], d.min(1), rtol=tol)
    np.testing.assert_allclose(D.max(dim=0)[:, 0], d.max(0), rtol=tol)
    np.testing.assert_array_equal(D.argmin(dim=1)[:, 0], d.argmin(1))
    np.testing.assert_array_equal(D.argmax(dim=0)[:, 0], d.argmax(0))
    order = np.argsort(d, axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(D.Kmin(3, dim=1), np.take_along_axis(d, order, 1), rtol=tol)
    idx = D.argKmin(K=3, dim=1)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, order)
    lse = (-D).logsumexp(dim=1)
    np.testing.assert_allclose(lse[:, 0], np.log(np.exp(-d).sum(1)), rtol=tol, atol=tol)


def test_sumsoftmaxweight(rng):
    x, y = clouds(rng)
    v = rng.standard_normal((17, 2))
    D = Vi(x).sqdist(Vj(y))
    out = (-D).sumsoftmaxweight(Vj(v), dim=1)
    w = np.exp(-sqdist(x, y))
    np.testing.assert_allclose(out, (w @ v) / w.sum(1, keepdims=True), rtol=1e-12)


def test_elementwise_operations(rng):
    x, y = clouds(rng, d=2)
    x_i, y_j = Vi(x), Vj(y)
    diff = x[:, None, :] - y[None, :, :]
    cases = [
        (lambda: (x_i - y_j).abs().sum(-1), np.abs(diff).sum(-1)),
        (lambda: (x_i * y_j).sin().sum(-1), np.sin(x[:, None] * y[None]).sum(-1)),
        (lambda: (x_i + y_j).cos().sum(-1), np.cos(x[:, None] + y[None]).sum(-1)),
        (lambda: (x_i - y_j).relu().sum(-1), np.maximum(diff, 0).sum(-1)),
        (lambda: ((x_i - y_j) ** 3).sum(-1), (diff ** 3).sum(-1)),
        (lambda: (x_i - y_j).square().sum(-1), (diff ** 2).sum(-1)),
        (lambda: (x_i - y_j).sqnorm2(), (diff ** 2).sum(-1)),
        (lambda: (x_i - y_j).norm2(), np.sqrt((diff ** 2).sum(-1))),
        (lambda: (x_i | y_j), (x[:, None] * y[None]).sum(-1)),
        (lambda: ((x_i - y_j).sqnorm2() + 1.0).sqrt(), np.sqrt((diff ** 2).sum(-1) + 1)),
        (lambda: ((x_i - y_j).sqnorm2() + 1.0).rsqrt(), 1 / np.sqrt((diff ** 2).sum(-1) + 1)),
        (lambda: ((x_i - y_j).sqnorm2() + 2).log(), np.log((diff ** 2).sum(-1) + 2)),
        (lambda: 1.0 / (1 + (x_i - y_j).sqnorm2()), 1 / (1 + (diff ** 2).sum(-1))),
        (lambda: 3 - (x_i * y_j).sum(-1) * 2.5, 3 - (x[:, None] * y[None]).sum(-1) * 2.5),
        (lambda: -(x_i / (y_j.abs() + 1)).sum(-1), -(x[:, None] / (np.abs(y[None]) + 1)).sum(-1)),
        (lambda: ((x_i - y_j).sqnorm2() + 1.0) ** 0.5, np.sqrt((diff ** 2).sum(-1) + 1)),
        (lambda: ((x_i - y_j).sqnorm2() + 1.0) ** 1.5, ((diff ** 2).sum(-1) + 1) ** 1.5),
    ]
    for make, dense in cases:
        np.testing.assert_allclose(make().sum(dim=1)[:, 0], dense.sum(1), rtol=1e-11, atol=1e-11)


def test_parameters_and_matvecmult(rng):
    x, y = clouds(rng, d=2)
    A = rng.standard_normal(4)  # a 2x2 matrix, row-major
    s = 0.7
    K = (-Pm(s) * Vi(x).sqdist(Vj(y))).exp()
    np.testing.assert_allclose(K.sum(dim=1)[:, 0], np.exp(-s * sqdist(x, y)).sum(1), rtol=1e-12)
    Ay = LazyTensor(A).matvecmult(Vj(y))
    out = (Vi(x) | Ay).sum(dim=1)
    ref = (x @ (y @ A.reshape(2, 2).T).T).sum(1)
    np.testing.assert_allclose(out[:, 0], ref, rtol=1e-12)


def test_same_expression_twice_reuses_the_kernel(rng):
    x, y = clouds(rng)
    a = (-Vi(x).sqdist(Vj(y))).exp().sum(dim=1)
    x2, y2 = clouds(rng)
    b = (-Vi(x2).sqdist(Vj(y2))).exp().sum(dim=1)
    np.testing.assert_allclose(b[:, 0], np.exp(-sqdist(x2, y2)).sum(1), rtol=1e-12)
    assert a.shape == b.shape


def test_axis_and_dim_keywords_and_inner_reductions(rng):
    x, y = clouds(rng)
    D = Vi(x).sqdist(Vj(y))
    d = sqdist(x, y)
    np.testing.assert_allclose(D.sum(axis=1)[:, 0], d.sum(1), rtol=1e-12)
    np.testing.assert_allclose(D.sum(1)[:, 0], d.sum(1), rtol=1e-12)
    np.testing.assert_array_equal(D.argKmin(2, axis=0), np.argsort(d.T, axis=1, kind="stable")[:, :2])
    # -1: the vector's own components, still symbolic
    diff = x[:, None, :] - y[None, :, :]
    np.testing.assert_allclose((Vi(x) - Vj(y)).min(-1).sum(dim=1)[:, 0], diff.min(-1).sum(1), rtol=1e-12)
    np.testing.assert_allclose((Vi(x) - Vj(y)).max().sum(dim=1)[:, 0], diff.max(-1).sum(1), rtol=1e-12)
    with pytest.raises(TypeError, match="dim"):
        D.logsumexp()


def test_batch_axes_reduce_every_batch_in_one_call(rng):
    """pykeops's batched LazyTensors: (B, N, 1, D), (B, 1, M, D), (B, 1, 1, D), broadcast over
    batch axes of size 1; dim counts the batch axes (or -3 / -2)."""
    B, N, M, D = 3, 40, 31, 2
    x = rng.random((B, N, 1, D))
    y = rng.random((1, 1, M, D))  # one cloud for every batch
    s = rng.random((B, 1, 1, 1)) + 0.5  # a bandwidth per batch
    b = rng.random((B, 1, M, 1))
    x_i, y_j, s_b, b_j = (LazyTensor(a) for a in (x, y, s, b))
    K = (-((x_i - y_j) ** 2).sum(-1) * s_b).exp() * b_j
    want = np.stack([
        np.exp(-((x[k, :, 0, None, :] - y[0, 0][None]) ** 2).sum(-1) * s[k, 0, 0, 0]) @ b[k, 0]
        for k in range(B)
    ])
    for dim in (2, -2):
        got = K.sum(dim=dim)
        assert got.shape == (B, N, 1)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # Over i, and an arg-reduction.
    over_i = K.sum(dim=1)
    assert over_i.shape == (B, M, 1)
    nearest = ((x_i - y_j) ** 2).sum(-1).argmin(dim=2)
    assert nearest.shape == (B, N, 1)
    d = ((x[:, :, 0, None, :] - y[0, 0][None, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(nearest[..., 0], d.argmin(-1))
    with pytest.raises(ValueError, match="do not broadcast"):
        (LazyTensor(rng.random((2, N, 1, D))) - LazyTensor(rng.random((3, 1, M, D)))).sum(dim=2)
    with pytest.raises(ValueError, match="dim: expected 1"):
        K.sum(dim=0)
