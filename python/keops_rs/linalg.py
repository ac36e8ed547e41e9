"""``keops_rs.linalg``: a kernel matrix as a linear operator, never formed.

A ``Sum`` kernel linear in one j-variable ``b`` (``K(x_i, y_j) * b_j``) is the product ``K b``;
everything here is built from such products and from vectors of length N:

- ``KernelOperator(kernel, operand=None, **inputs)``: ``matvec``/``matmat`` (``ceil(ncols / R)``
  kernel passes for ``R`` the operand's dimension), ``diagonal()``, ``@``, and
  ``aslinearoperator()`` (a ``scipy.sparse.linalg.LinearOperator`` when scipy is installed).
- ``normalize(op, "alpha=1,sym")``: ``row`` (``D^-1 K``), ``sym`` (``D^-1/2 K D^-1/2``),
  ``alpha=A`` (``D^-A K D^-A``); each step costs one product (its degrees ``K 1``).
- ``power(op, V, t)``: ``A^t V``. ``cg(op, b, lam=...)``: conjugate gradients for
  ``(A + lam I) x = b`` (Jacobi preconditioner with ``preconditioner="jacobi"``).
  ``eigsh(op, k)``: the top-k eigenpairs of a symmetric operator (thick-restart Lanczos).
- Long runs call ``callback(progress)`` with a ``Progress`` after each step.

The same algorithms run in Rust (``keops_runtime::linalg``) and from the shell
(``keopsc linalg``); lang-spec/linalg.md describes them.
"""

from dataclasses import dataclass

import numpy as np

from ._keops_rs import Kernel

__all__ = [
    "KernelOperator",
    "ScaledOperator",
    "normalize",
    "power",
    "cg",
    "eigsh",
    "CgResult",
    "EigResult",
    "Progress",
]


@dataclass
class Progress:
    """Where a long computation stands: ``step`` of ``steps``; for ``cg`` and ``lanczos``
    the largest residual not yet converged and how many columns/pairs have converged."""

    task: str
    step: int
    steps: int
    residual: float = 0.0
    converged: int = 0
    wanted: int = 0

    def __str__(self):
        text = f"{self.task}: step {self.step}/{self.steps}"
        if self.wanted:
            text += f", {self.converged}/{self.wanted} converged, residual {self.residual:.3e}"
        return text


def _report(callback, *args):
    if callback is not None:
        callback(Progress(*args))


class _Operator:
    """What every operator here offers on top of ``_apply`` (a 2-d block, float64)."""

    shape = (0, 0)

    def _apply(self, x):
        raise NotImplementedError

    def matmat(self, x):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.shape[1]:
            raise ValueError(
                f"matmat: the operand has shape {x.shape}; expected ({self.shape[1]}, ncols)"
            )
        if x.shape[1] == 0:
            return np.zeros((self.shape[0], 0))
        return self._apply(x)

    def matvec(self, v):
        v = np.asarray(v, dtype=np.float64)
        if v.shape not in ((self.shape[1],), (self.shape[1], 1)):
            raise ValueError(
                f"matvec: the vector has shape {v.shape}; expected ({self.shape[1]},)"
            )
        out = self._apply(v.reshape(-1, 1))
        return out.reshape(-1) if v.ndim == 1 else out

    def __matmul__(self, x):
        x = np.asarray(x)
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    @property
    def dtype(self):
        return np.dtype(np.float64)

    def aslinearoperator(self):
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (needs scipy)."""
        try:
            from scipy.sparse.linalg import LinearOperator
        except ImportError as e:  # scipy is optional
            raise ImportError("aslinearoperator needs scipy (pip install scipy)") from e
        return LinearOperator(
            self.shape,
            matvec=self.matvec,
            matmat=self.matmat,
            rmatvec=self._rmatvec,
            dtype=np.float64,
        )

    def _rmatvec(self, v):
        raise NotImplementedError(
            "this operator's transpose is not available: for a symmetric kernel it is the "
            "operator itself (normalize with 'sym' for the symmetric normalisation)"
        )


class KernelOperator(_Operator):
    """A ``Sum`` kernel linear in its argument ``operand`` (``K(...) * b``), seen as the matrix
    ``K`` acting on ``b``; ``inputs`` give every other argument by name. ``kernel`` is a
    ``keops_rs.Kernel`` or ``.kf`` text. The operand may be left out when it is the one argument
    of the reduced index and the output's dimension not given. Products run in the inputs'
    dtype (accumulated in float64) and come back as float64.

    Linearity is checked on a sample of the points (at most 32 of each index) before use: a
    formula not linear in the operand is refused with ``ValueError``.

    ``same={"y": "x"}``: the j-variable ``y`` holds the data of the i-variable ``x`` (one point
    cloud against itself; ``y`` may then be left out). Every product then walks each unordered
    pair once (``Kernel.call_same``): about half the work for a Gaussian, the same result up
    to summation order. ``pairs_once`` says whether products do.
    """

    def __init__(self, kernel, operand=None, same=None, **inputs):
        if not isinstance(kernel, Kernel):
            kernel = Kernel(kernel)
        self.kernel = kernel
        self.same = dict(same or {})
        for j, i in self.same.items():
            if i not in inputs:
                raise ValueError(f"same: `{j}` holds the data of `{i}`, which is not given")
            inputs.setdefault(j, inputs[i])
        if not kernel.reduction.startswith("Sum_Reduction"):
            raise ValueError(
                f"kernel `{kernel.name}` reduces by {kernel.reduction}: only Sum is linear"
            )
        reduced = "Vj" if kernel.axis == 0 else "Vi"
        output_category = "Vi" if kernel.axis == 0 else "Vj"
        arguments = kernel.arguments
        names = [a[0] for a in arguments]
        for name in inputs:
            if name not in names:
                raise ValueError(
                    f"unknown argument `{name}`: the kernel's arguments are {', '.join(names)}"
                )
        if operand is None:
            candidates = [
                n
                for n, c, d in arguments
                if c == reduced and d == kernel.output_dim and n not in inputs
            ]
            if len(candidates) != 1:
                raise ValueError(
                    "name the argument the operator multiplies with operand=... "
                    f"(candidates: {', '.join(candidates) or 'none'})"
                )
            operand = candidates[0]
        spec = {n: (c, d) for n, c, d in arguments}
        if operand not in spec:
            raise ValueError(f"no argument `{operand}`: the kernel's arguments are {', '.join(names)}")
        if operand in inputs:
            raise ValueError(f"`{operand}` is the operand: do not pass it with the inputs")
        category, width = spec[operand]
        if category != reduced:
            raise ValueError(
                f"`{operand}` is a {category} variable, but the operand must be a {reduced} "
                "variable (indexed by the reduced index)"
            )
        if width != kernel.output_dim:
            raise ValueError(
                f"`{operand}` has dimension {width} but the output {kernel.output_dim}: "
                "output column c must be K times operand column c"
            )
        missing = [n for n in names if n != operand and n not in inputs]
        if missing:
            raise ValueError(f"missing argument(s): {', '.join(missing)}")
        arrays = {n: np.ascontiguousarray(inputs[n]) for n in names if n != operand}
        dtypes = {a.dtype for a in arrays.values()}
        self.compute_dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
        if self.compute_dtype not in (np.float32, np.float64):
            self.compute_dtype = np.dtype(np.float64)
        self.inputs = {n: a.astype(self.compute_dtype, copy=False) for n, a in arrays.items()}
        self.operand = operand
        self.width = width
        self._names = names
        self._spec = spec
        self._reduced = reduced
        rows_of = lambda cat: next(  # noqa: E731
            (a.shape[0] for n, a in self.inputs.items() if spec[n][0] == cat), None
        )
        cols = rows_of(reduced)
        if cols is None:
            raise ValueError(
                f"no argument but the operand `{operand}` is a {reduced} variable: nothing "
                "gives the operator's number of columns"
            )
        rows = rows_of(output_category) or 1
        self.shape = (rows, cols)
        # The native side checks the data on each call too; this is what products will do.
        self.pairs_once = (
            bool(self.same)
            and all(np.array_equal(self.inputs[j], self.inputs[i]) for j, i in self.same.items())
            and self.kernel.walks_pairs_once(self.same)
        )
        self._check_linearity()

    def _call(self, inputs, operand):
        args = dict(inputs)
        args[self.operand] = np.ascontiguousarray(operand, dtype=self.compute_dtype)
        ordered = [args[n] for n in self._names]
        if self.same:
            return self.kernel.call_same(self.same, *ordered)
        return self.kernel(*ordered)

    def _apply(self, x):
        ncols = x.shape[1]
        out = np.empty((self.shape[0], ncols))
        for first in range(0, ncols, self.width):
            block = x[:, first : first + self.width]
            taken = block.shape[1]
            if taken < self.width:
                block = np.concatenate(
                    [block, np.zeros((block.shape[0], self.width - taken))], axis=1
                )
            out[:, first : first + taken] = self._call(self.inputs, block)[:, :taken]
        return out

    def diagonal(self):
        """``K[i, i]``, by one kernel call per point on that point alone: O(N) calls."""
        n = min(self.shape)
        ones = np.ones((1, self.width), dtype=self.compute_dtype)
        out = np.empty(n)
        for i in range(n):
            point = {
                name: (a if self._spec[name][0] == "Pm" else a[i : i + 1])
                for name, a in self.inputs.items()
            }
            out[i] = self._call(point, ones)[0, 0]
        return out

    def _check_linearity(self):
        sample = {
            name: (a if self._spec[name][0] == "Pm" else a[:32])
            for name, a in self.inputs.items()
        }
        m = next(a.shape[0] for n, a in sample.items() if self._spec[n][0] == self._reduced)
        k = np.arange(m * self.width, dtype=np.float64).reshape(m, self.width)
        b1, b2 = np.sin(0.7548 * k + 0.3), np.sin(0.7548 * k + 1.9)
        f1, f2 = self._call(sample, b1), self._call(sample, b2)
        f12 = self._call(sample, b1 + 2.5 * b2)
        tol = 1e-3 if self.compute_dtype == np.float32 else 1e-9
        scale = max(np.abs(f1).max(initial=0), np.abs(f2).max(initial=0), 1e-300)
        problem = None
        if np.abs(f1 + 2.5 * f2 - f12).max(initial=0) > 3.5 * tol * scale:
            problem = f"its output is not linear in `{self.operand}`"
        elif self.width > 1:
            shifted = b1.copy()
            shifted[:, 0] += 1.0
            g = self._call(sample, shifted)
            if np.abs(g[:, 1:] - f1[:, 1:]).max(initial=0) > tol * scale:
                problem = f"output column c depends on other columns of `{self.operand}`"
        if problem:
            raise ValueError(
                f"kernel `{self.kernel.name}` is not a linear operator on `{self.operand}`: "
                f"{problem}; the formula must be `K(...) * {self.operand}`"
            )

    def __repr__(self):
        return (
            f"keops_rs.linalg.KernelOperator({self.shape[0]} x {self.shape[1]} on "
            f"`{self.operand}` of width {self.width}, {self.compute_dtype}"
            + (", each unordered pair once)" if self.pairs_once else ")")
        )


class ScaledOperator(_Operator):
    """``diag(left) A diag(right)`` of a square operator ``A``."""

    def __init__(self, op, left=None, right=None):
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"a normalisation needs a square operator; this one is {op.shape}")
        n = op.shape[0]
        self.op = op
        self.shape = op.shape
        self.left = np.ones(n) if left is None else np.asarray(left, dtype=np.float64)
        self.right = np.ones(n) if right is None else np.asarray(right, dtype=np.float64)
        # The degrees of a last `sym` step (set by `normalize`).
        self.symmetric_degrees = None

    def _apply(self, x):
        return self.left[:, None] * self.op.matmat(self.right[:, None] * x)

    def degrees(self):
        """The product with the ones vector."""
        return self._apply(np.ones((self.shape[1], 1)))[:, 0]

    def diagonal(self):
        return self.left * self.op.diagonal() * self.right

    def random_walk_eigenvectors(self, phi):
        """``D^-1/2 phi``: the eigenvectors of the random walk ``D^-1 A`` from eigenvectors
        ``phi`` (``(N, k)``) of this operator when its last step was ``sym`` (``A`` the operator
        before that step, ``D`` its degrees); same eigenvalues, ``psi^T D psi = 1``."""
        if self.symmetric_degrees is None:
            raise ValueError("the random walk's eigenvectors need a last normalisation step 'sym'")
        phi = np.asarray(phi, dtype=np.float64)
        scale = 1.0 / np.sqrt(self.symmetric_degrees)
        return phi * (scale[:, None] if phi.ndim == 2 else scale)

    def _rmatvec(self, v):
        # Only needed by scipy for symmetric operators (sym normalisation of a symmetric K).
        return self.matvec(v)


_EXPONENTS = {"row": (-1.0, 0.0), "sym": (-0.5, -0.5), "symmetric": (-0.5, -0.5)}


def _parse_steps(steps):
    if steps is None:
        return []
    if isinstance(steps, str):
        steps = [s for s in steps.split(",") if s.strip() and s.strip() != "none"]
    parsed = []
    for step in steps:
        step = step.strip()
        if step in _EXPONENTS:
            parsed.append(_EXPONENTS[step])
        elif step.startswith("alpha="):
            try:
                a = float(step[len("alpha="):])
            except ValueError:
                raise ValueError(f"`{step}`: alpha must be a number") from None
            parsed.append((-a, -a))
        else:
            raise ValueError(f"unknown normalisation `{step}`: expected row, sym or alpha=A")
    return parsed


def normalize(op, steps):
    """``op`` normalised by each step in turn (``"row"``, ``"sym"``, ``"alpha=A"``, as a list or
    comma-separated): a ``ScaledOperator``. Each step costs one product (the degrees)."""
    scaled = op if isinstance(op, ScaledOperator) else ScaledOperator(op)
    scaled = ScaledOperator(scaled.op, scaled.left.copy(), scaled.right.copy())
    for left_exp, right_exp in _parse_steps(steps):
        d = scaled.degrees()
        bad = np.flatnonzero(~(d > 0) | ~np.isfinite(d))
        if bad.size:
            raise ValueError(
                f"row {bad[0]} has degree {d[bad[0]]}: a normalisation needs every degree "
                "positive and finite"
            )
        scaled.left = scaled.left * d**left_exp
        scaled.right = scaled.right * d**right_exp
        scaled.symmetric_degrees = d if (left_exp, right_exp) == (-0.5, -0.5) else None
    return scaled


def power(op, v, t, callback=None):
    """``op^t v`` for a square operator: ``t`` products."""
    v = np.asarray(v, dtype=np.float64)
    x = v.reshape(v.shape[0], -1)
    for step in range(1, t + 1):
        x = op.matmat(x)
        _report(callback, "power", step, t)
    return x.reshape(v.shape)


@dataclass
class CgResult:
    """``x`` shaped like ``b``; ``iterations`` (one product each); ``converged``;
    ``residual_history`` (the largest relative residual before each iteration and after the
    last); ``relative_residuals`` per column, recomputed from ``x``."""

    x: np.ndarray
    iterations: int
    converged: bool
    residual_history: np.ndarray
    relative_residuals: np.ndarray


def cg(op, b, lam=0.0, tol=1e-8, maxiter=1000, preconditioner=None, callback=None):
    """Solves ``(op + lam I) x = b`` by conjugate gradients, every column of ``b`` at once (one
    product of all the columns per iteration). ``preconditioner``: ``None`` or ``"jacobi"``
    (``diag(op + lam I)^-1``, from ``op.diagonal()``). The system must be symmetric positive
    definite; a breakdown that shows it is not raises ``ValueError``."""
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"conjugate gradients need a square operator; this one is {op.shape}")
    if not tol > 0:
        raise ValueError(f"the tolerance must be positive, not {tol}")
    b = np.asarray(b, dtype=np.float64)
    B = b.reshape(b.shape[0], -1)
    if B.shape[0] != op.shape[0]:
        raise ValueError(f"b has shape {b.shape}; expected ({op.shape[0]},) or ({op.shape[0]}, R)")
    if preconditioner is None:
        inv = None
    elif preconditioner == "jacobi":
        d = op.diagonal() + lam
        if not np.all(d > 0):
            raise ValueError("the Jacobi preconditioner needs a positive diagonal of op + lam I")
        inv = (1.0 / d)[:, None]
    else:
        raise ValueError(f"unknown preconditioner `{preconditioner}`: None or 'jacobi'")
    apply = lambda p: op.matmat(p) + lam * p  # noqa: E731
    precondition = (lambda r: r) if inv is None else (lambda r: inv * r)  # noqa: E731
    bnorm = np.linalg.norm(B, axis=0)
    safe = np.where(bnorm > 0, bnorm, 1.0)
    x = np.zeros_like(B)
    r = B.copy()
    z = precondition(r)
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    res = np.where(bnorm > 0, np.linalg.norm(r, axis=0) / safe, 0.0)
    active = res > tol
    history = [res.max(initial=0.0)]
    it = 0
    while active.any() and it < maxiter:
        it += 1
        q = apply(p)
        pq = np.einsum("ij,ij->j", p, q)
        if np.any(active & ~(pq > 0)):
            c = int(np.flatnonzero(active & ~(pq > 0))[0])
            raise ValueError(
                f"conjugate gradients broke down at iteration {it} (column {c}): p^T A p = "
                f"{pq[c]}; the operator plus the shift is not positive definite"
            )
        alpha = np.where(active, rz / np.where(active, pq, 1.0), 0.0)
        x += alpha * p
        r -= alpha * q
        res = np.where(bnorm > 0, np.linalg.norm(r, axis=0) / safe, 0.0)
        z = precondition(r)
        rz_next = np.einsum("ij,ij->j", r, z)
        beta = np.where(active, rz_next / np.where(rz != 0, rz, 1.0), 0.0)
        rz = np.where(active, rz_next, rz)
        active = active & (res > tol)
        p = np.where(active, z + beta * p, 0.0)
        history.append(res.max(initial=0.0))
        worst = res[active].max(initial=0.0)
        _report(callback, "cg", it, maxiter, worst, int((~active).sum()), B.shape[1])
    true = B - apply(x)
    rel = np.where(bnorm > 0, np.linalg.norm(true, axis=0) / safe, 0.0)
    return CgResult(x.reshape(b.shape), it, not active.any(), np.array(history), rel)


@dataclass
class EigResult:
    """Eigenvalues in decreasing order, unit eigenvectors as columns (largest component
    positive), ``||A y - theta y||`` per pair, whether all met the tolerance, restarts and
    products used."""

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    converged: bool
    restarts: int
    products: int


def _orthogonalize(V, w):
    total = np.zeros(V.shape[1])
    for _ in range(2):
        c = V.T @ w
        w -= V @ c
        total += c
    return total


def eigsh(op, k=6, tol=1e-8, basis=None, max_restarts=200, v0=None, callback=None):
    """The ``k`` algebraically largest eigenpairs of the symmetric operator ``op`` by Lanczos
    with full reorthogonalisation and thick restarts. A pair is accepted when ``||A y - theta
    y|| <= tol * |theta_max|``; an eigenvalue then lies within that of ``theta``. ``basis``:
    the Krylov size before a restart (default ``max(2k + 1, k + 20)``)."""
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"eigsh needs a square operator; this one is {op.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} eigenpairs asked of an operator of size {n} (1 <= k <= N)")
    m = min(n, basis or max(2 * k + 1, k + 20))
    if m <= k and m < n:
        raise ValueError(f"a basis of {m} vectors cannot hold k = {k} eigenvectors (basis > k)")
    rng = np.random.default_rng(0x5EED)
    start = rng.uniform(-1, 1, n) if v0 is None else np.asarray(v0, dtype=np.float64).copy()
    nxt = start / np.linalg.norm(start)
    basis_store = np.zeros((n, m))
    size = 0  # the columns of basis_store in use
    H = np.zeros((m, m))
    beta_last, scale, products, restart = 0.0, 0.0, 0, 0
    while True:
        exhausted = False
        while size < m:
            j = size
            basis_store[:, j] = nxt
            size += 1
            V = basis_store[:, :size]
            w = op.matvec(V[:, j]).astype(np.float64)
            products += 1
            c = _orthogonalize(V, w)
            H[: j + 1, j] = c
            H[j, : j + 1] = c
            beta = np.linalg.norm(w)
            scale = max(scale, abs(c[j]), beta)
            if beta > 1e-12 * scale:
                beta_last, nxt = beta, w / beta
            else:
                beta_last = 0.0
                if size >= n:
                    exhausted = True
                    break
                w = rng.uniform(-1, 1, n)
                _orthogonalize(V, w)
                nxt = w / np.linalg.norm(w)
        V = basis_store[:, :size]
        theta, S = np.linalg.eigh(H[:size, :size])
        theta, S = theta[::-1], S[:, ::-1]
        residuals = np.abs(beta_last * S[size - 1, :k])
        threshold = tol * max(np.abs(theta).max(), np.finfo(float).tiny)
        done = residuals <= threshold
        converged = exhausted or bool(done.all())
        _report(callback, "lanczos", restart + 1, max_restarts + 1,
                float(residuals[~done].max(initial=0.0)), int(done.sum()), k)
        if converged or restart == max_restarts:
            Y = V @ S[:, :k]
            Y /= np.linalg.norm(Y, axis=0)
            idx = np.abs(Y).argmax(axis=0)
            Y *= np.sign(Y[idx, np.arange(k)])
            return EigResult(theta[:k].copy(), Y, residuals, converged, restart, products)
        keep = max(k, min(k + (size - k) // 2, size - 1))
        basis_store[:, :keep] = V @ S[:, :keep]
        size = keep
        H[:] = 0.0
        H[np.arange(keep), np.arange(keep)] = theta[:keep]
        restart += 1
