"""keops_rs.linalg against dense numpy (LAPACK) on a few hundred to a thousand points."""

import numpy as np
import pytest

import keops_rs
from keops_rs import linalg

GAUSS4 = """
kernel gauss {
    x = Vi(3)
    y = Vj(3)
    b = Vj(4)
    s = Pm(1)
    Sum_Reduction(Exp(-SqDist(x, y) / (2 * s * s)) * b, 0)
}
"""

GAUSS1 = GAUSS4.replace("Vj(4)", "Vj(1)")


def cloud(rng, n):
    return rng.random((n, 3))


def dense(x, s):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * s * s))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_matvec_and_matmat_match_dense(rng, dtype, tol):
    x = cloud(rng, 700).astype(dtype)
    op = linalg.KernelOperator(GAUSS4, x=x, y=x, s=np.array([0.2], dtype=dtype))
    assert op.shape == (700, 700) and op.operand == "b" and op.width == 4
    K = dense(x.astype(np.float64), 0.2)
    for ncols in (1, 4, 7):
        V = rng.standard_normal((700, ncols))
        np.testing.assert_allclose(op.matmat(V), K @ V, atol=tol * np.abs(K @ V).max())
    v = rng.standard_normal(700)
    np.testing.assert_allclose(op @ v, K @ v, atol=tol * np.abs(K @ v).max())
    np.testing.assert_allclose(op.diagonal()[:20], np.ones(20), atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_symmetric_products_walk_each_pair_once_and_match_dense(rng, dtype, tol):
    # 700 points: two blocks of 256 rows and a partial one.
    x = cloud(rng, 700).astype(dtype)
    s = np.array([0.2], dtype=dtype)
    op = linalg.KernelOperator(GAUSS4, same={"y": "x"}, x=x, s=s)
    assert op.pairs_once and "each unordered pair once" in repr(op)
    K = dense(x.astype(np.float64), 0.2)
    for ncols in (1, 6):
        V = rng.standard_normal((700, ncols))
        np.testing.assert_allclose(op.matmat(V), K @ V, atol=tol * np.abs(K @ V).max())
    # The kernel's own call_same, against a plain call.
    k = keops_rs.Kernel(GAUSS4)
    b = rng.standard_normal((700, 4)).astype(dtype)
    full = k(x, x, b, s)
    once = k.call_same({"y": "x"}, x, x, b, s)
    np.testing.assert_allclose(once, full, atol=tol * np.abs(full).max())
    # Another cloud for y: a plain call, bit for bit.
    y = cloud(rng, 700).astype(dtype)
    np.testing.assert_array_equal(k.call_same({"y": "x"}, x, y, b, s), k(x, y, b, s))
    assert not linalg.KernelOperator(GAUSS4, same={"y": "x"}, x=x, y=y, s=s).pairs_once


def test_same_is_a_plain_call_where_pairs_once_would_not_pay(rng):
    # The two halves of this formula share nothing: walking unordered pairs saves nothing.
    apart = GAUSS1.replace("Exp(-SqDist(x, y) / (2 * s * s))", "Exp(Elem(x, 0) * s - Elem(y, 1))")
    k = keops_rs.Kernel(apart)
    assert not k.walks_pairs_once({"y": "x"})
    assert keops_rs.Kernel(GAUSS1).walks_pairs_once({"y": "x"})
    x, b, s = cloud(rng, 300), rng.standard_normal((300, 1)), np.array([0.7])
    np.testing.assert_array_equal(k.call_same({"y": "x"}, x, x, b, s), k(x, x, b, s))
    assert not linalg.KernelOperator(apart, same={"y": "x"}, x=x, s=s).pairs_once


def test_same_names_what_is_wrong(rng):
    k = keops_rs.Kernel(GAUSS4)
    x = cloud(rng, 10)
    b, s = np.ones((10, 4)), np.array([0.2])
    with pytest.raises(ValueError, match="no argument `z`"):
        k.call_same({"z": "x"}, x, x, b, s)
    with pytest.raises(ValueError, match="cannot hold the data"):
        k.call_same({"x": "y"}, x, x, b, s)
    knn = keops_rs.Kernel("kernel m { x = Vi(3) y = Vj(3) Min_Reduction(SqDist(x, y), 0) }")
    with pytest.raises(ValueError, match="only Sum"):
        knn.call_same({"y": "x"}, x, x)
    with pytest.raises(ValueError, match="not given"):
        linalg.KernelOperator(GAUSS4, same={"y": "q"}, x=x, s=s)


def test_normalisations_and_powers_match_dense(rng):
    x = cloud(rng, 400)
    op = linalg.KernelOperator(GAUSS1, x=x, y=x, s=np.array([0.15]))
    K = dense(x, 0.15)
    d = K.sum(1)
    V = rng.standard_normal((400, 3))
    cases = {
        "row": K / d[:, None],
        "sym": K / np.sqrt(np.outer(d, d)),
        "alpha=0.5": K / np.sqrt(np.outer(d, d)),
    }
    Ka = K / np.outer(d, d)
    cases["alpha=1,row"] = Ka / Ka.sum(1)[:, None]
    for steps, A in cases.items():
        P = linalg.normalize(op, steps)
        np.testing.assert_allclose(P.matmat(V), A @ V, rtol=1e-10, atol=1e-12, err_msg=steps)
    walk = linalg.normalize(op, "row")
    np.testing.assert_allclose(walk @ np.ones(400), np.ones(400), atol=1e-12)
    seen = []
    out = linalg.power(walk, V, 6, callback=lambda p: seen.append(p.step))
    np.testing.assert_allclose(out, np.linalg.matrix_power(cases["row"], 6) @ V, atol=1e-12)
    assert seen == list(range(1, 7))
    with pytest.raises(ValueError, match="unknown normalisation"):
        linalg.normalize(op, "rows")


@pytest.mark.parametrize("preconditioner", [None, "jacobi"])
def test_cg_matches_a_dense_solve(rng, preconditioner):
    x = cloud(rng, 600)
    op = linalg.KernelOperator(GAUSS4, x=x, y=x, s=np.array([0.1]))
    K = dense(x, 0.1)
    B = rng.standard_normal((600, 3))
    reports = []
    res = linalg.cg(op, B, lam=0.05, tol=1e-10, preconditioner=preconditioner,
                    callback=reports.append)
    assert res.converged and res.x.shape == (600, 3)
    assert len(reports) == res.iterations and len(res.residual_history) == res.iterations + 1
    assert (res.relative_residuals < 1e-9).all()
    want = np.linalg.solve(K + 0.05 * np.eye(600), B)
    np.testing.assert_allclose(res.x, want, atol=1e-6 * np.abs(want).max())


def test_eigsh_matches_lapack(rng):
    x = cloud(rng, 500)
    op = linalg.KernelOperator(GAUSS1, x=x, y=x, s=np.array([0.1]))
    K = dense(x, 0.1)
    d = K.sum(1)
    S = K / np.sqrt(np.outer(d, d))
    w, U = np.linalg.eigh(S)
    w, U = w[::-1], U[:, ::-1]
    A = linalg.normalize(op, "sym")
    res = linalg.eigsh(A, k=8, tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(res.values, w[:8], atol=1e-9)
    assert abs(res.values[0] - 1.0) < 1e-9
    gaps = np.minimum(np.abs(np.diff(w[:9])), np.abs(np.diff(np.r_[np.inf, w[:8]])))
    cosines = np.abs((res.vectors * U[:, :8]).sum(0))
    assert np.all(1 - cosines[gaps[:8] > 1e-4] < 1e-8), cosines
    # The random walk's eigenvectors: D^-1 K psi = lambda psi, psi^T D psi = 1.
    psi = A.random_walk_eigenvectors(res.vectors)
    np.testing.assert_allclose((K / d[:, None]) @ psi, psi * res.values, atol=1e-8)
    np.testing.assert_allclose((d[:, None] * psi**2).sum(0), np.ones(8), atol=1e-9)
    with pytest.raises(ValueError, match="last normalisation step"):
        linalg.normalize(op, "row").random_walk_eigenvectors(res.vectors)
    # A small basis forces restarts and still converges.
    small = linalg.eigsh(A, k=4, tol=1e-10, basis=10)
    assert small.converged and small.restarts > 0
    np.testing.assert_allclose(small.values, w[:4], atol=1e-9)


def test_scipy_linear_operator(rng):
    sla = pytest.importorskip("scipy.sparse.linalg")
    x = cloud(rng, 300)
    op = linalg.KernelOperator(GAUSS1, x=x, y=x, s=np.array([0.1]))
    K = dense(x, 0.1)
    A = linalg.normalize(op, "sym").aslinearoperator()
    vals = sla.eigsh(A, k=3, which="LA", return_eigenvectors=False)
    d = K.sum(1)
    w = np.linalg.eigvalsh(K / np.sqrt(np.outer(d, d)))
    np.testing.assert_allclose(np.sort(vals), w[-3:], atol=1e-8)
    b = rng.standard_normal(300)
    shifted = sla.LinearOperator((300, 300), matvec=lambda v: op.matvec(v) + 0.1 * v, dtype=float)
    try:
        sol, info = sla.cg(shifted, b, rtol=1e-10, maxiter=5000)
    except TypeError:  # scipy < 1.12 names the tolerance `tol`
        sol, info = sla.cg(shifted, b, tol=1e-10, maxiter=5000)
    assert info == 0
    np.testing.assert_allclose(sol, np.linalg.solve(K + 0.1 * np.eye(300), b), atol=1e-6)


def test_errors_name_the_problem(rng):
    x = cloud(rng, 50)
    with pytest.raises(ValueError, match="not a linear operator on `b`"):
        linalg.KernelOperator(GAUSS1.replace("* b, 0", "* b * b, 0"), x=x, y=x, s=np.array([0.1]))
    with pytest.raises(ValueError, match="only Sum is linear"):
        linalg.KernelOperator(GAUSS1.replace("Sum_Reduction", "Max_Reduction"), x=x, y=x,
                              s=np.array([0.1]))
    with pytest.raises(ValueError, match="missing argument"):
        linalg.KernelOperator(GAUSS1, x=x, y=x)
    op = linalg.KernelOperator(GAUSS1, x=x, y=x, s=np.array([0.1]))
    with pytest.raises(ValueError, match="expected \\(50,\\)"):
        op.matvec(np.ones(49))
    with pytest.raises(ValueError, match="k = 51"):
        linalg.eigsh(op, k=51)
    with pytest.raises(ValueError, match="not positive definite"):
        linalg.cg(op, np.ones(50), lam=-10.0)
    assert isinstance(op.kernel, keops_rs.Kernel)
