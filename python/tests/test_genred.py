"""Genred against dense numpy float64 computations, in pykeops's conventions."""

import numpy as np
import pytest

from keops_rs import Genred
from conftest import sqdist

ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]


def data(rng, n=31, m=19, dtype=np.float64):
    x = rng.standard_normal((n, 3)).astype(dtype)
    y = rng.standard_normal((m, 3)).astype(dtype)
    b = rng.standard_normal((m, 2)).astype(dtype)
    return x, y, b


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_sum_axis_one_reduces_over_j(rng, dtype, tol):
    g = Genred("Exp(-SqDist(x,y))*b", ALIASES, reduction_op="Sum", axis=1)
    x, y, b = data(rng, dtype=dtype)
    out = g(x, y, b)
    assert out.shape == (31, 2) and out.dtype == dtype
    np.testing.assert_allclose(out, np.exp(-sqdist(x, y)) @ b.astype(np.float64), rtol=tol, atol=tol)


def test_sum_axis_zero_reduces_over_i(rng):
    g = Genred("Exp(-SqDist(x,y))*x", ["x = Vi(3)", "y = Vj(3)"], axis=0)
    x, y, _ = data(rng)
    out = g(x, y)
    assert out.shape == (19, 3)
    np.testing.assert_allclose(out, np.exp(-sqdist(x, y)).T @ x, rtol=1e-12)


def test_default_axis_is_zero_as_pykeops(rng):
    # pykeops's own install test: default axis=0, one value per j.
    x = np.arange(1, 10, dtype=np.float64).reshape(3, 3)
    y = np.arange(3, 9, dtype=np.float64).reshape(2, 3)
    out = Genred("SqNorm2(x-y)", ["x = Vi(3)", "y = Vj(3)"])(x, y)
    np.testing.assert_array_equal(out, [[63.0], [90.0]])


def test_positional_aliases_in_any_order(rng):
    g = Genred("Exp(-SqDist(x,y))*b", ["b = Vj(2, 2)", "x = Vi(0, 3)", "y = Vj(1, 3)"], axis=1)
    x, y, b = data(rng)
    np.testing.assert_allclose(g(x, y, b), np.exp(-sqdist(x, y)) @ b, rtol=1e-12)


def test_parameter_alias(rng):
    g = Genred("Exp(-g*SqDist(x,y))", ["x = Vi(3)", "y = Vj(3)", "g = Pm(1)"], axis=1)
    x, y, _ = data(rng)
    out = g(x, y, np.array([0.3]))
    np.testing.assert_allclose(out[:, 0], np.exp(-0.3 * sqdist(x, y)).sum(1), rtol=1e-12)


def test_logsumexp(rng):
    g = Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="LogSumExp", axis=1)
    x, y, _ = data(rng)
    out = g(x, y)
    assert out.shape == (31, 1)
    d = -sqdist(x, y)
    ref = d.max(1) + np.log(np.exp(d - d.max(1, keepdims=True)).sum(1))
    np.testing.assert_allclose(out[:, 0], ref, rtol=1e-12)


def test_logsumexp_with_weight(rng):
    g = Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], reduction_op="LogSumExp",
               axis=1, formula2="Exp(b)")
    x, y, b = data(rng)
    out = g(x, y, b)
    ref = np.log(np.exp(-sqdist(x, y)) @ np.exp(b))
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_sumsoftmaxweight(rng):
    g = Genred("-SqDist(x,y)", ALIASES, reduction_op="SumSoftMaxWeight", axis=1, formula2="b")
    x, y, b = data(rng)
    out = g(x, y, b)
    w = np.exp(-sqdist(x, y))
    np.testing.assert_allclose(out, (w @ b) / w.sum(1, keepdims=True), rtol=1e-12)


def test_min_max_and_indices(rng):
    x, y, _ = data(rng)
    d = sqdist(x, y)
    args = ("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"])
    np.testing.assert_allclose(Genred(*args, reduction_op="Min", axis=1)(x, y)[:, 0], d.min(1), rtol=1e-12)
    np.testing.assert_allclose(Genred(*args, reduction_op="Max", axis=0)(x, y)[:, 0], d.max(0), rtol=1e-12)
    am = Genred(*args, reduction_op="ArgMin", axis=1)(x, y)
    assert am.dtype == np.int64 and am.shape == (31, 1)
    np.testing.assert_array_equal(am[:, 0], d.argmin(1))
    vals, idx = Genred(*args, reduction_op="Min_ArgMin", axis=1)(x, y)
    np.testing.assert_allclose(vals[:, 0], d.min(1), rtol=1e-12)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, 0], d.argmin(1))
    np.testing.assert_array_equal(Genred(*args, reduction_op="ArgMax", axis=0)(x, y)[:, 0], d.argmax(0))


def test_k_nearest(rng):
    x, y, _ = data(rng)
    d = sqdist(x, y)
    args = ("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"])
    order = np.argsort(d, axis=1, kind="stable")[:, :4]
    kmin = Genred(*args, reduction_op="KMin", axis=1, opt_arg=4)(x, y)
    np.testing.assert_allclose(kmin, np.take_along_axis(d, order, 1), rtol=1e-12)
    arg = Genred(*args, reduction_op="ArgKMin", axis=1, opt_arg=4)(x, y)
    assert arg.dtype == np.int64
    np.testing.assert_array_equal(arg, order)
    vals, idx = Genred(*args, reduction_op="KMin_ArgKMin", axis=1, opt_arg=4)(x, y)
    np.testing.assert_allclose(vals, np.take_along_axis(d, order, 1), rtol=1e-12)
    np.testing.assert_array_equal(idx, order)


def test_max_sumshiftexp_raw_pair(rng):
    g = Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Max_SumShiftExp", axis=1)
    x, y, _ = data(rng)
    out = g(x, y)
    d = -sqdist(x, y)
    np.testing.assert_allclose(out[:, 0], d.max(1), rtol=1e-12)
    np.testing.assert_allclose(out[:, 1], np.exp(d - d.max(1, keepdims=True)).sum(1), rtol=1e-12)


def test_out_argument_and_backend(rng):
    g = Genred("Exp(-SqDist(x,y))*b", ALIASES, axis=1)
    x, y, b = data(rng)
    out = np.empty((31, 2))
    assert g(x, y, b, backend="CPU", out=out) is out
    np.testing.assert_allclose(out, np.exp(-sqdist(x, y)) @ b, rtol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        g(x, y, b, backend="GPU")


def test_the_reduction_table_is_the_compilers():
    """Genred reads its reductions from the compiler (``reduction_kinds``): every kind is
    accepted under its .kf name, pykeops's other spellings map onto kinds the compiler has,
    and the index-returning kinds are the arg-reductions."""
    from keops_rs import _keops_rs
    from keops_rs.genred import _INDICES, _REDUCTIONS, _VALUES_AND_INDICES

    kinds = {name: rest for name, *rest in _keops_rs.reduction_kinds()}
    assert len(kinds) == 15
    for name, (kf, takes_k, takes_weight) in _REDUCTIONS.items():
        assert kf in kinds, name
        assert (takes_k, takes_weight) == tuple(kinds[kf][:2]), name
    # The names pykeops users write, all accepted.
    pykeops = {
        "Sum", "Min", "Max", "ArgMin", "ArgMax", "Min_ArgMin", "MinArgMin", "Max_ArgMax",
        "MaxArgMax", "KMin", "ArgKMin", "KMin_ArgKMin", "KMinArgKMin", "LogSumExp",
        "LogSumExpWeight", "Max_SumShiftExp", "Max_SumShiftExpWeight", "SumSoftMaxWeight",
        "SoftMax",
    }
    assert pykeops <= set(_REDUCTIONS)
    assert _REDUCTIONS["LogSumExpWeight"][0] == "Max_SumShiftExpWeight"
    assert _INDICES == {"ArgMin", "ArgMax", "ArgKMin"}
    assert _VALUES_AND_INDICES == {"Min_ArgMin", "Max_ArgMax", "KMin_ArgKMin"}
    assert kinds["KMin"][0] and kinds["SumSoftMaxWeight"][1]
