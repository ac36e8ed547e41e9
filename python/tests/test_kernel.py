"""keops_rs.Kernel on .kf text: calls, dtypes, layouts, gradients, signature, threads."""

import threading

import numpy as np
import pytest

import keops_rs
from conftest import GAUSS, gauss_data, gauss_dense, sqdist


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_call_matches_interpreter_and_dense(rng, dtype, tol):
    k = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng, dtype=dtype)
    out = k(x, y, b, s)
    assert out.dtype == dtype and out.shape == (37, 1)
    ref = k.evaluate(x, y, b, s, backend="interp")
    assert ref.dtype == dtype
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(out, gauss_dense(x, y, b, s), rtol=10 * tol, atol=10 * tol)


def test_keyword_and_positional_calls_agree(rng):
    k = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng)
    a = k(x, y, b, s)
    np.testing.assert_array_equal(k(s=s, b=b, y=y, x=x), a)
    np.testing.assert_array_equal(k(x, y, s=s, b=b), a)


def test_non_contiguous_inputs_are_copied(rng):
    k = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng)
    expected = k(x, y, b, s)
    xf = np.asfortranarray(x)
    y_strided = np.repeat(y, 2, axis=0)[::2]
    assert not xf.flags.c_contiguous and not y_strided.flags.c_contiguous
    np.testing.assert_array_equal(k(xf, y_strided, b, s), expected)
    # a column of a wider array
    wide = np.concatenate([b, b * 3], axis=1)
    np.testing.assert_array_equal(k(x, y, wide[:, :1], s), expected)


def test_inputs_are_not_modified(rng):
    k = keops_rs.Kernel(GAUSS)
    args = gauss_data(rng)
    copies = [a.copy() for a in args]
    k(*args)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_one_dimensional_and_scalar_shapes(rng):
    k = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng)
    expected = k(x, y, b, s)
    np.testing.assert_array_equal(k(x, y, b[:, 0], np.array(0.8)), expected)


def test_axis_one_output_per_j(rng):
    src = """
kernel per_j {
    x = Vi(2)
    y = Vj(2)
    Sum_Reduction(Exp(-SqDist(x, y)) * x, 1)
}
"""
    k = keops_rs.Kernel(src)
    x = rng.standard_normal((11, 2))
    y = rng.standard_normal((7, 2))
    out = k(x, y)
    assert out.shape == (7, 2)
    np.testing.assert_allclose(out, np.exp(-sqdist(x, y)).T @ x, rtol=1e-12)
    assert k.axis == 1 and k.output_dim == 2


def test_several_kernels_need_a_name(rng):
    src = GAUSS + "\nkernel twice {\n    x = Vi(1)\n    y = Vj(1)\n    Sum_Reduction(2 * x * y, 0)\n}\n"
    with pytest.raises(ValueError, match="name"):
        keops_rs.Kernel(src)
    k = keops_rs.Kernel(src, name="twice")
    x = rng.standard_normal((5, 1))
    y = rng.standard_normal((4, 1))
    np.testing.assert_allclose(k(x, y), 2 * x * y.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="nope"):
        keops_rs.Kernel(src, name="nope")


def test_signature_is_printable():
    k = keops_rs.Kernel(GAUSS)
    text = str(k.signature)
    for part in ["gauss_conv", "x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "s = Pm(1)", "Sum_Reduction"]:
        assert part in text
    assert k.arguments == [("x", "Vi", 3), ("y", "Vj", 3), ("b", "Vj", 1), ("s", "Pm", 1)]
    assert k.name == "gauss_conv"
    assert "gauss_conv" in repr(k)


def test_repeated_construction_uses_the_table():
    a = keops_rs.Kernel(GAUSS)
    b = keops_rs.Kernel(GAUSS)
    assert a.signature == b.signature


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vjp_matches_closed_form_and_finite_differences(rng, dtype):
    k = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng, n=9, m=7, dtype=dtype)
    g = rng.standard_normal((9, 1)).astype(dtype)
    x64, y64, b64 = (a.astype(np.float64) for a in (x, y, b))
    s64 = float(s[0])
    kmat = np.exp(-sqdist(x64, y64) / (2 * s64 * s64))
    w = g.astype(np.float64) * b64.T * kmat  # (N, M): g_i b_j K_ij
    dx_ref = -(w.sum(1)[:, None] * x64 - w @ y64) / (s64 * s64)
    dy_ref = -(w.sum(0)[:, None] * y64 - w.T @ x64) / (s64 * s64)
    db_ref = kmat.T @ g.astype(np.float64)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    dx = k.vjp("x", g, x, y, b, s)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(k.vjp("y", g, x, y, b, s), dy_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(k.vjp("b", g, x, y, b, s), db_ref, rtol=tol, atol=tol)
    ds = k.vjp("s", g, x, y, b, s)
    assert ds.shape == s.shape
    if dtype == np.float64:
        h = 1e-6
        f = lambda sv: float((g * k(x, y, b, np.array([sv]))).sum())
        fd = (f(s64 + h) - f(s64 - h)) / (2 * h)
        np.testing.assert_allclose(ds[0], fd, rtol=1e-6)
        # by keyword, and on the interpreter
        np.testing.assert_allclose(k.vjp("x", g, x=x, y=y, b=b, s=s, backend="interp"), dx_ref, rtol=1e-12)


def test_vjp_errors_name_what_is_wrong(rng):
    k = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng)
    with pytest.raises(ValueError, match="`z`"):
        k.vjp("z", np.ones((37, 1)), x, y, b, s)
    with pytest.raises(ValueError, match="cotangent"):
        k.vjp("x", np.ones((36, 1)), x, y, b, s)
    with pytest.raises(TypeError, match="cotangent"):
        k.vjp("x", np.ones((37, 1), dtype=np.float32), x, y, b, s)


def test_two_threads_call_concurrently(rng):
    k = keops_rs.Kernel(GAUSS)
    data = [gauss_data(rng, n=400 + 50 * t, m=300) for t in range(4)]
    expected = [k(*d) for d in data]
    results = {}
    errors = []

    def work(t):
        try:
            for _ in range(5):
                results[t] = k(*data[t])
        except Exception as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in range(4):
        np.testing.assert_array_equal(results[t], expected[t])


def test_threads_compile_concurrently(rng):
    sources = [
        f"kernel k{t} {{\n    x = Vi(1)\n    y = Vj(1)\n    Sum_Reduction(x * y + {t}, 0)\n}}\n"
        for t in range(3)
    ]
    out = {}

    def work(t):
        out[t] = keops_rs.Kernel(sources[t])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    x = rng.standard_normal((6, 1))
    y = rng.standard_normal((5, 1))
    for t in range(3):
        np.testing.assert_allclose(out[t](x, y), x * y.sum() + 5 * t, rtol=1e-12)


def test_batch_axes_run_every_batch_in_one_call(rng):
    # (B1, B2, N, D) points, a weight broadcast over the first batch axis, a shared parameter.
    k = keops_rs.Kernel(GAUSS)
    x = rng.random((3, 4, 50, 3))
    y = rng.random((3, 4, 70, 3))
    b = rng.random((1, 4, 70, 1))
    s = np.array([0.4])
    out = k(x, y, b, s)
    assert out.shape == (3, 4, 50, 1)
    for i in range(3):
        for j in range(4):
            np.testing.assert_array_equal(out[i, j], k(x[i, j], y[i, j], b[0, j], s))
    # float32, and many small problems (each on one thread).
    xs = rng.random((200, 20, 3)).astype(np.float32)
    ys = rng.random((200, 30, 3)).astype(np.float32)
    bs = rng.random((200, 30, 1)).astype(np.float32)
    out = k(xs, ys, bs, s.astype(np.float32))
    assert out.shape == (200, 20, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[17], k(xs[17], ys[17], bs[17], s.astype(np.float32)))
    with pytest.raises(ValueError, match="do not broadcast"):
        k(x, y[:2], b, s)
