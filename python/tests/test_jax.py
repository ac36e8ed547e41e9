"""keops_rs.jax: the XLA FFI custom call against dense JAX float64 computations, under jit,
grad/vjp (every float input, against jax.vjp of the dense formula and finite differences),
vmap, float32 and float64; error paths; the mirrored C structs against jaxlib's header."""

import pathlib
import shutil
import subprocess

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="keops_rs.jax needs jax (scripts/python.sh venv installs it)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import keops_rs  # noqa: E402
import keops_rs.jax as kj  # noqa: E402
from keops_rs import _keops_rs  # noqa: E402

from conftest import GAUSS  # noqa: E402

LSE = """kernel lse {
    x = Vi(3)
    y = Vj(3)
    h = Vj(1)
    g = Pm(1)
    LogSumExp_Reduction(-SqDist(x, y) * g + h, 0)
}
"""

MIN = """kernel nearest {
    x = Vi(2)
    y = Vj(2)
    w = Vj(1)
    Min_Reduction(SqDist(x, y) * w, 0)
}
"""

# Reduces over i: one output row per j.
SUM_I = """kernel over_i {
    x = Vi(3)
    y = Vj(3)
    a = Vi(2)
    Sum_Reduction(Exp(-SqDist(x, y)) * a, 1)
}
"""


def sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def gauss_dense(x, y, b, s):
    return jnp.exp(-sqdist(x, y) / (2 * s[0] * s[0])) @ b


def lse_dense(x, y, h, g):
    return jax.nn.logsumexp(-sqdist(x, y) * g[0] + h[:, 0][None, :], axis=1)[:, None]


def min_dense(x, y, w):
    return jnp.min(sqdist(x, y) * w[:, 0][None, :], axis=1)[:, None]


def sum_i_dense(x, y, a):
    return jnp.exp(-sqdist(x, y)).T @ a


def data(rng, shapes, dtype=np.float64, positive=()):
    out = []
    for k, shape in enumerate(shapes):
        a = rng.standard_normal(shape)
        if k in positive:
            a = np.abs(a) + 0.5
        out.append(jnp.asarray(a.astype(dtype)))
    return out


CASES = {
    "gauss": (GAUSS, gauss_dense, [(37, 3), (23, 3), (23, 1), (1,)], (3,)),
    "lse": (LSE, lse_dense, [(31, 3), (19, 3), (19, 1), (1,)], (3,)),
    "min": (MIN, min_dense, [(29, 2), (17, 2), (17, 1)], (2,)),
    "sum_i": (SUM_I, sum_i_dense, [(21, 3), (26, 3), (21, 2)], ()),
}


@pytest.fixture(scope="module")
def kernels():
    return {name: kj.Kernel(case[0]) for name, case in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("jit", [False, True])
def test_forward_matches_dense_f64(kernels, case, jit):
    _, dense, shapes, positive = CASES[case]
    args = data(np.random.default_rng(1), shapes, positive=positive)
    f = jax.jit(kernels[case]) if jit else kernels[case]
    out = f(*args)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense(*args)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_f32(kernels, case):
    _, dense, shapes, positive = CASES[case]
    args = data(np.random.default_rng(2), shapes, np.float32, positive)
    out = jax.jit(kernels[case])(*args)
    assert out.dtype == jnp.float32
    want = dense(*[a.astype(jnp.float64) for a in args])
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vjp_every_input_matches_dense(kernels, case):
    _, dense, shapes, positive = CASES[case]
    rng = np.random.default_rng(3)
    args = data(rng, shapes, positive=positive)
    out, pullback = jax.vjp(kernels[case], *args)
    want_out, want_pullback = jax.vjp(dense, *args)
    g = jnp.asarray(rng.standard_normal(out.shape))
    grads, want = pullback(g), want_pullback(g)
    assert len(grads) == len(args)
    for name, a, got, ref in zip([a[0] for a in kernels[case].arguments], args, grads, want):
        assert got.shape == a.shape and got.dtype == a.dtype, name
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-9, atol=1e-10,
                                   err_msg=f"gradient of `{name}`")


@pytest.mark.parametrize("case", sorted(CASES))
def test_grad_under_jit_matches_finite_differences(kernels, case):
    _, _, shapes, positive = CASES[case]
    rng = np.random.default_rng(4)
    args = data(rng, shapes, positive=positive)
    k = kernels[case]
    weights = jnp.asarray(rng.standard_normal(k(*args).shape))

    def loss(*a):
        return jnp.sum(weights * k(*a))

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
    eps = 1e-6
    for pos, (a, grad) in enumerate(zip(args, grads)):
        flat = np.asarray(a).reshape(-1)
        for entry in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            step = np.zeros_like(flat)
            step[entry] = eps
            plus = list(args)
            minus = list(args)
            plus[pos] = jnp.asarray((flat + step).reshape(a.shape))
            minus[pos] = jnp.asarray((flat - step).reshape(a.shape))
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(float(fd) - float(np.asarray(grad).reshape(-1)[entry])) < 1e-5 * (1 + abs(float(fd)))


def test_grad_of_one_input_runs_its_own_plan(kernels):
    x, y, b, s = data(np.random.default_rng(5), CASES["gauss"][2])
    k = kernels["gauss"]
    only_y = jax.grad(lambda y: jnp.sum(k(x, y, b, s) ** 2))(y)
    want = jax.grad(lambda y: jnp.sum(gauss_dense(x, y, b, s) ** 2))(y)
    np.testing.assert_allclose(np.asarray(only_y), np.asarray(want), rtol=1e-9, atol=1e-12)


def test_grad_f32(kernels):
    x, y, b, s = data(np.random.default_rng(6), CASES["gauss"][2], np.float32)
    k = kernels["gauss"]
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(k(*a)), argnums=(0, 1, 2, 3)))(x, y, b, s)
    wide = [a.astype(jnp.float64) for a in (x, y, b, s)]
    want = jax.grad(lambda *a: jnp.sum(gauss_dense(*a)), argnums=(0, 1, 2, 3))(*wide)
    for got, ref in zip(grads, want):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_vmap_over_leading_axis(kernels):
    rng = np.random.default_rng(7)
    k = kernels["gauss"]
    xs = jnp.asarray(rng.standard_normal((4, 11, 3)))
    y, b, s = data(rng, [(9, 3), (9, 1), (1,)])
    out = jax.jit(jax.vmap(k, in_axes=(0, None, None, None)))(xs, y, b, s)
    assert out.shape == (4, 11, 1)
    for t in range(4):
        np.testing.assert_allclose(np.asarray(out[t]), np.asarray(gauss_dense(xs[t], y, b, s)), rtol=1e-12)
    # Every input batched, and gradients through the batch.
    ys = jnp.asarray(rng.standard_normal((4, 9, 3)))
    ss = jnp.asarray(np.abs(rng.standard_normal((4, 1))) + 0.5)

    def loss(x, y, s):
        return jnp.sum(k(x, y, b, s) ** 2)

    def dense_loss(x, y, s):
        return jnp.sum(gauss_dense(x, y, b, s) ** 2)

    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(xs, ys, ss)
    want = jax.vmap(jax.grad(dense_loss, argnums=(0, 1, 2)))(xs, ys, ss)
    for got, ref in zip(grads, want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-9, atol=1e-12)


def test_keywords_and_python_scalars(kernels):
    x, y, b = data(np.random.default_rng(8), CASES["gauss"][2][:3])
    k = kernels["gauss"]
    out = k(s=0.7, b=b, y=y, x=x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(gauss_dense(x, y, b, jnp.array([0.7]))), rtol=1e-12)


def test_matches_numpy_kernel():
    x, y, b, s = (np.asarray(a) for a in data(np.random.default_rng(9), CASES["gauss"][2]))
    np.testing.assert_allclose(np.asarray(kj.Kernel(GAUSS)(x, y, b, s)), keops_rs.Kernel(GAUSS)(x, y, b, s),
                               rtol=1e-14)


def test_genred_jax_same_as_numpy_genred():
    rng = np.random.default_rng(10)
    x, y, b, a = (rng.standard_normal(s) for s in [(15, 3), (12, 3), (12, 1), (15, 1)])
    formula = "Exp(-SqDist(x,y))*b"
    over_j = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"]
    over_i = ["x = Vi(3)", "y = Vj(3)", "b = Vi(1)"]  # axis=0 (the default) reduces over i
    for aliases, axis, weights in [(over_j, 1, b), (over_i, 0, a)]:
        got = kj.Genred(formula, aliases, axis=axis)(x, y, weights)
        want = keops_rs.Genred(formula, aliases, axis=axis)(x, y, weights)
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13)
    pair = kj.Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Min_ArgMin", axis=1)(x, y)
    want = keops_rs.Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Min_ArgMin", axis=1)(x, y)
    np.testing.assert_allclose(np.asarray(pair[0]), want[0], rtol=1e-14)
    assert pair[1].dtype == jnp.int64 and np.array_equal(np.asarray(pair[1]), want[1])
    # Gradient through a Genred, LogSumExp over j, under jit.
    lse = kj.Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="LogSumExp", axis=1)
    xg, yg = jnp.asarray(x), jnp.asarray(y)
    got = jax.jit(jax.grad(lambda x: jnp.sum(lse(x, yg))))(xg)
    want = jax.grad(lambda x: jnp.sum(jax.nn.logsumexp(-sqdist(x, yg), axis=1)))(xg)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)


# ---- errors, raised at trace time


def test_bad_source_raises_kferror():
    with pytest.raises(keops_rs.KfError, match=r"<source>:\d+:\d+"):
        kj.Kernel("kernel k {\n x = Vi(3)\n Sum_Reduction(Foo(x), 0)\n}\n")
    with pytest.raises(keops_rs.KfError):
        kj.Genred("Exp(-SqDist(x,", ["x = Vi(3)", "y = Vj(3)"], axis=1)


def test_shape_and_dtype_errors_name_the_argument(kernels):
    x, y, b, s = data(np.random.default_rng(11), CASES["gauss"][2])
    k = kernels["gauss"]
    with pytest.raises(ValueError, match="`y`"):
        k(x, y[:, :2], b, s)
    with pytest.raises(ValueError, match="`b`"):
        k(x, y, b[:5], s)
    with pytest.raises(TypeError, match="`b`"):
        k(x, y, b.astype(jnp.int32), s)
    with pytest.raises(TypeError, match="`y`"):
        k(x, y.astype(jnp.float32), b, s)
    with pytest.raises(TypeError, match="`s`"):
        k(x, y, b)
    with pytest.raises(TypeError, match="`x`"):
        k("x", y, b, s)
    # Under jit: raised while tracing, before anything runs.
    with pytest.raises(ValueError, match="`x`"):
        jax.jit(k)(x[:, :1], y, b, s)
    with pytest.raises(ValueError, match="`y`"):
        jax.vmap(k, in_axes=(None, 0, None, None))(x, jnp.stack([y[:, :2]] * 2), b, s)
    # A vector for a variable of dimension 3 is named by the shape given, (N,), not (N, 1).
    with pytest.raises(ValueError, match=r"`x` \(Vi\(3\)\) has shape \(100,\); expected \(N, 3\)"):
        jax.jit(k)(jnp.zeros(100), y, b, s)


def test_gradient_of_indices_is_refused():
    k = kj.Kernel("kernel nn {\n x = Vi(3)\n y = Vj(3)\n ArgMin_Reduction(SqDist(x, y), 0)\n}\n")
    x, y = data(np.random.default_rng(12), [(6, 3), (5, 3)])
    assert k(x, y).shape == (6, 1)
    with pytest.raises(ValueError, match="no gradient"):
        jax.grad(lambda x: jnp.sum(k(x, y)))(x)


def test_handler_errors_become_jax_errors():
    x = jnp.ones((3, 3))
    call = jax.ffi.ffi_call("keops_rs_call", jax.ShapeDtypeStruct((3, 1), x.dtype))
    with pytest.raises(jax.errors.JaxRuntimeError, match="no compiled kernel with id"):
        jax.block_until_ready(call(x, kernel=np.int64(1 << 40)))


# ---- the mirrored C API against jaxlib's header


def test_ffi_struct_layout_matches_header(tmp_path):
    include = pathlib.Path(jax.ffi.include_dir())
    header = include / "xla" / "ffi" / "api" / "c_api.h"
    if not header.exists():
        pytest.skip(f"jaxlib's FFI header is not at {header}: layout not checked")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc, clang): layout not checked against the header")
    layout = _keops_rs._ffi_layout()
    exprs = sorted(layout)
    lines = [f'    printf("%zu\\n", (size_t)({e}));' for e in exprs]
    program = tmp_path / "layout.c"
    program.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"xla/ffi/api/c_api.h\"\n"
        "int main(void) {\n" + "\n".join(lines) + "\n    return 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", str(include), str(program), "-o", str(exe)], check=True)
    measured = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert dict(zip(exprs, map(int, measured))) == layout
    assert layout["sizeof(XLA_FFI_Api)"] == 192


def test_jitted_program_is_a_custom_call(kernels):
    x, y, b, s = data(np.random.default_rng(13), CASES["gauss"][2])
    k = kernels["gauss"]
    forward = jax.jit(k).lower(x, y, b, s).as_text()
    assert "keops_rs_call" in forward and "callback" not in forward
    # Only `y` is differentiated: the backward call has one result, shaped like `y`.
    backward = jax.jit(jax.grad(lambda y: jnp.sum(k(x, y, b, s)))).lower(y).as_text()
    calls = [line for line in backward.splitlines() if "keops_rs_vjp" in line]
    assert len(calls) == 1 and "-> tensor<23x3xf64>" in calls[0], calls


LINEAR = """
kernel gauss {
    x = Vi(3)
    y = Vj(3)
    b = Vj(2)
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) / (2 * s * s)) * b, 0)
}
"""


def test_kernel_operator_in_jax_solves_normalises_and_differentiates():
    rng = np.random.default_rng(4)
    n = 300
    x = jnp.asarray(rng.random((n, 3)))
    s = jnp.asarray([0.3])
    A = kj.KernelOperator(LINEAR, x=x, y=x, s=s)
    assert A.operand == "b" and A.shape == (n, n)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    K = np.asarray(jnp.exp(-d2 / (2 * 0.3**2)))
    # Three columns through an operand of width 2: two passes, the second padded.
    V = rng.standard_normal((n, 3))
    np.testing.assert_allclose(np.asarray(A @ V), K @ V, rtol=1e-12, atol=1e-10)
    # jax.scipy's conjugate gradients on (K + lam I) x = b, under jit.
    b = jnp.asarray(rng.standard_normal(n))
    lam = 0.5
    solve = jax.jit(lambda b: jax.scipy.sparse.linalg.cg(lambda v: A(v) + lam * v, b, tol=1e-12)[0])
    np.testing.assert_allclose(np.asarray(solve(b)), np.linalg.solve(K + lam * np.eye(n), b),
                               rtol=1e-8, atol=1e-8)
    # Normalised: sym is D^-1/2 K D^-1/2, row D^-1 K.
    d = K.sum(1)
    S = kj.KernelOperator(LINEAR, normalize="sym", x=x, y=x, s=s)
    np.testing.assert_allclose(np.asarray(S(V[:, 0])), (K / np.sqrt(np.outer(d, d))) @ V[:, 0],
                               rtol=1e-10, atol=1e-12)
    P = kj.KernelOperator(LINEAR, normalize="row", x=x, y=x, s=s)
    np.testing.assert_allclose(np.asarray(P(jnp.ones(n))), np.ones(n), rtol=1e-12)
    # d/dv sum(w * K v) = K^T w, through the kernel's backward.
    w = jnp.asarray(rng.standard_normal(n))
    g = jax.grad(lambda v: jnp.sum(w * A(v)))(jnp.zeros(n))
    np.testing.assert_allclose(np.asarray(g), K.T @ np.asarray(w), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="only Sum"):
        kj.KernelOperator(LINEAR.replace("Sum_Reduction", "Max_Reduction"), x=x, y=x, s=s)
    with pytest.raises(ValueError, match="unknown step"):
        kj.KernelOperator(LINEAR, normalize="rows", x=x, y=x, s=s)


def test_kernel_operator_made_from_traced_points_under_jit_and_grad():
    # Diffusion powers of P(X) = D^-1 K(X) differentiated with respect to the points: the
    # operator is made inside the traced function, its degrees traced too.
    rng = np.random.default_rng(12)
    n, t = 60, 3
    x0 = jnp.asarray(rng.random((n, 3)))
    s = jnp.asarray([0.4])
    w = jnp.asarray(rng.standard_normal(n))

    def loss(x, op):
        v = jnp.ones(n) / n + 0.1 * w
        for _ in range(t):
            v = op(x)(v)
        return jnp.sum(w * v)

    keops = lambda x: kj.KernelOperator(LINEAR, normalize="row", x=x, y=x, s=s)  # noqa: E731

    def dense(x):
        k = jnp.exp(-((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) / (2 * 0.4**2))
        return lambda v: (k / k.sum(1, keepdims=True)) @ v

    value, grad = jax.jit(jax.value_and_grad(lambda x: loss(x, keops)))(x0)
    want_value, want_grad = jax.value_and_grad(lambda x: loss(x, dense))(x0)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-9, atol=1e-12)
    # Degrees of 0 (every y far from every x): an error on concrete points, NaN where traced.
    with pytest.raises(ValueError, match="not positive"):
        kj.KernelOperator(LINEAR, normalize="row", x=x0, y=x0 + 100, s=s)
    far = jax.jit(lambda x: kj.KernelOperator(LINEAR, normalize="row", x=x, y=x + 100, s=s)(w))
    assert np.isnan(np.asarray(far(x0))).all()


def test_vmap_runs_the_forward_as_one_batched_call(kernels):
    # Nested vmap over two axes, an input mapped over one of them only, a dimension-1 input
    # given as (N,): one custom call whose arrays carry the batch axes.
    rng = np.random.default_rng(11)
    k = kernels["gauss"]
    xs = jnp.asarray(rng.standard_normal((3, 2, 11, 3)))
    y, _, s = data(rng, [(9, 3), (9, 1), (1,)])
    bs = jnp.asarray(rng.standard_normal((2, 9)))
    inner = jax.vmap(k, in_axes=(0, None, 0, None))
    out = jax.jit(jax.vmap(inner, in_axes=(0, None, None, None)))(xs, y, bs, s)
    assert out.shape == (3, 2, 11, 1)
    for i in range(3):
        for j in range(2):
            want = gauss_dense(xs[i, j], y, bs[j][:, None], s)
            np.testing.assert_allclose(np.asarray(out[i, j]), np.asarray(want), rtol=1e-12)
    text = jax.jit(jax.vmap(inner, in_axes=(0, None, None, None))).lower(xs, y, bs, s).as_text()
    assert text.count("keops_rs_call") == 1, "one custom call for the whole batch"


def test_vmap_of_grad_runs_one_backward_call(kernels):
    # x mapped over, y not (its gradient summed over the batch by JAX), s mapped: one forward
    # and one backward custom call for the whole batch, against dense JAX.
    rng = np.random.default_rng(12)
    k = kernels["gauss"]
    xs = jnp.asarray(rng.standard_normal((5, 11, 3)))
    y, b, _ = data(rng, [(9, 3), (9, 1), (1,)])
    ss = jnp.asarray(np.abs(rng.standard_normal((5, 1))) + 0.5)

    def loss(x, y, s):
        return jnp.sum(k(x, y, b, s) ** 2)

    def dense_loss(x, y, s):
        return jnp.sum(gauss_dense(x, y, b, s) ** 2)

    batched = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(0, None, 0))
    got = jax.jit(batched)(xs, y, ss)
    want = jax.vmap(jax.grad(dense_loss, argnums=(0, 1, 2)), in_axes=(0, None, 0))(xs, y, ss)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-12)
    text = jax.jit(batched).lower(xs, y, ss).as_text()
    assert text.count("keops_rs_vjp") == 1 and text.count("keops_rs_call") == 1, text
