"""``LazyTensor``: pykeops.numpy's symbolic tensors, compiled by keops-rs.

A LazyTensor is an expression over i-variables (arrays ``(N, 1, D)``), j-variables
(``(1, M, D)``) and parameters (1-D arrays, Python floats); nothing N x M is ever allocated.
Each operation builds one node of the compiler's formula tree, ``(op, *params, [children])``
with the operator's ``.kf`` name (``("Exp", [f])``, ``("Pow", 3, [f])``). A reduction over i or j
hands that tree to ``build_kernel`` (leaves become the arguments ``a0, a1, ...`` in order of
first appearance, so the same expression built twice is the same kernel and hits the
compiled-kernel table); the compiler's checker builds the formula IR from it, compiles it once,
and the kernel runs on the leaves' arrays.
"""

import numbers

import numpy as np

from ._keops_rs import build_kernel
from .genred import axis_tag, check_backend, postprocess, ranges_for, reduction_spec

_I, _J, _P = "Vi", "Vj", "Pm"


class _Leaf:
    """One variable: its data (``(B..., rows, D)`` for Vi/Vj, ``(B..., D)`` for Pm, ``B...``
    its batch axes, none for a plain array), or a Python float to be made a parameter in the
    call's dtype."""

    def __init__(self, category, data, dim, batch=()):
        self.category = category
        self.data = data
        self.dim = dim
        self.batch = batch


def _leaf_tensor(category, data, dim, batch=()):
    t = LazyTensor.__new__(LazyTensor)
    leaf = _Leaf(category, data, dim, batch)
    t._node = ("leaf", leaf)
    t._leaves = [leaf]
    t.ndim = dim
    return t


class LazyTensor:
    """``LazyTensor(x, axis=None)``: ``x`` of shape ``(N, 1, D)`` is an i-variable, ``(1, M, D)``
    a j-variable, ``(D,)`` (or ``(1, 1, D)``) a parameter, a Python number a constant. A 2-D
    ``(N, D)`` array needs ``axis``: 0 for i, 1 for j. Leading batch axes, as pykeops:
    ``(B..., N, 1, D)``, ``(B..., 1, M, D)``, ``(B..., 1, 1, D)``, broadcast between the
    variables (size 1 or missing); a reduction then gives ``(B..., rows, Dout)``, every batch
    in one call."""

    def __init__(self, x, axis=None):
        if isinstance(x, LazyTensor):
            self._node, self._leaves, self.ndim = x._node, x._leaves, x.ndim
            return
        if isinstance(x, bool):
            raise TypeError("x: a LazyTensor is made from a numpy array or a number, not a bool")
        if isinstance(x, numbers.Integral):
            self._node, self._leaves, self.ndim = ("IntCst", int(x)), [], 1
            return
        if isinstance(x, numbers.Real):
            other = _leaf_tensor(_P, float(x), 1)
            self._node, self._leaves, self.ndim = other._node, other._leaves, 1
            return
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy array or a number, not {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"x: dtype {x.dtype} is not supported; use float32 or float64")
        if axis is not None:
            if x.ndim != 2 or axis not in (0, 1, 2):
                raise ValueError(f"axis: with axis={axis!r}, x must be 2-D (rows, D); it has shape {x.shape}")
            category = (_I, _J, _P)[axis]
            data = x if axis < 2 else x.reshape(-1)
            dim = x.shape[1] if axis < 2 else x.size
        elif x.ndim == 1:
            category, data, dim = _P, x, x.shape[0]
        elif x.ndim == 3 and x.shape[0] == 1 and x.shape[1] == 1:
            category, data, dim = _P, x.reshape(-1), x.shape[2]
        elif x.ndim == 3 and x.shape[1] == 1:
            category, data, dim = _I, x[:, 0, :], x.shape[2]
        elif x.ndim == 3 and x.shape[0] == 1:
            category, data, dim = _J, x[0], x.shape[2]
        elif x.ndim > 3:
            batch, (n, m, dim) = x.shape[:-3], x.shape[-3:]
            if n == 1 and m == 1:
                category, data = _P, x[..., 0, 0, :]
            elif m == 1:
                category, data = _I, x[..., :, 0, :]
            elif n == 1:
                category, data = _J, x[..., 0, :, :]
            else:
                raise ValueError(
                    f"x: shape {x.shape}: the last three axes must be (N, 1, D) (i-variable), "
                    "(1, M, D) (j-variable) or (1, 1, D) (parameter), after the batch axes"
                )
            other = _leaf_tensor(category, data, dim, tuple(batch))
            self._node, self._leaves, self.ndim = other._node, other._leaves, dim
            return
        else:
            raise ValueError(
                f"x: shape {x.shape} is not (N, 1, D) (i-variable), (1, M, D) (j-variable) or (D,) "
                "(parameter); for a 2-D array pass axis=0 or axis=1"
            )
        other = _leaf_tensor(category, data, dim)
        self._node, self._leaves, self.ndim = other._node, other._leaves, dim

    # -- building expressions ------------------------------------------------------------

    @staticmethod
    def _wrap(x):
        return x if isinstance(x, LazyTensor) else LazyTensor(x)

    def _make(self, node, others, ndim):
        t = LazyTensor.__new__(LazyTensor)
        t._node = node
        leaves = list(self._leaves)
        for o in others:
            leaves += [l for l in o._leaves if all(l is not k for k in leaves)]
        t._leaves = leaves
        t.ndim = ndim
        return t

    def _unary(self, op, ndim=None):
        return self._make((op, [self._node]), [], self.ndim if ndim is None else ndim)

    def _binary(self, op, other, ndim=None, reverse=False):
        other = self._wrap(other)
        if ndim is None:
            if self.ndim != other.ndim and 1 not in (self.ndim, other.ndim):
                raise ValueError(
                    f"operands of {op} have dimensions {self.ndim} and {other.ndim}: they must be equal or one of them 1"
                )
            ndim = max(self.ndim, other.ndim)
        a, b = (other, self) if reverse else (self, other)
        return a._make((op, [a._node, b._node]), [b], ndim)

    def __add__(self, o): return self._binary("Add", o)
    def __radd__(self, o): return self._binary("Add", o, reverse=True)
    def __sub__(self, o): return self._binary("Subtract", o)
    def __rsub__(self, o): return self._binary("Subtract", o, reverse=True)
    def __mul__(self, o): return self._binary("Mult", o)
    def __rmul__(self, o): return self._binary("Mult", o, reverse=True)
    def __truediv__(self, o): return self._binary("Divide", o)
    def __rtruediv__(self, o): return self._binary("Divide", o, reverse=True)
    def __neg__(self): return self._unary("Minus")
    def __abs__(self): return self.abs()

    def __pow__(self, k):
        if isinstance(k, numbers.Integral) and not isinstance(k, bool):
            if k == 2:
                return self.square()
            return self._make(("Pow", int(k), [self._node]), [], self.ndim)
        if isinstance(k, numbers.Real):
            if k == 0.5:
                return self.sqrt()
            if k == -0.5:
                return self.rsqrt()
            return self._binary("Powf", float(k), ndim=self.ndim)
        raise TypeError(f"exponent: expected a number, not {type(k).__name__}")

    def __or__(self, o):
        o = self._wrap(o)
        if self.ndim != o.ndim:
            raise ValueError(f"| (scalar product): dimensions {self.ndim} and {o.ndim} differ")
        return self._binary("Scalprod", o, ndim=1)

    def exp(self): return self._unary("Exp")
    def log(self): return self._unary("Log")
    def sqrt(self): return self._unary("Sqrt")
    def rsqrt(self): return self._unary("Rsqrt")
    def abs(self): return self._unary("Abs")
    def sin(self): return self._unary("Sin")
    def cos(self): return self._unary("Cos")
    def relu(self): return self._unary("ReLU")
    def square(self): return self._unary("Square")
    def sign(self): return self._unary("Sign")
    def step(self): return self._unary("Step")
    def atan(self): return self._unary("Atan")
    def sqnorm2(self): return self._unary("SqNorm2", 1)
    def norm2(self): return self._unary("Norm2", 1)
    def normalize(self): return self._unary("Normalize")

    def sqdist(self, other):
        other = self._wrap(other)
        return self._binary("SqDist", other, ndim=1)

    def matvecmult(self, v):
        v = self._wrap(v)
        if self.ndim % v.ndim != 0:
            raise ValueError(f"matvecmult: a matrix of {self.ndim} entries and a vector of {v.ndim}")
        return self._binary("MatVecMult", v, ndim=self.ndim // v.ndim)

    # -- reductions ----------------------------------------------------------------------

    # pykeops names the reduced axis `axis` or `dim`; -1 (the vector's own components) stays
    # symbolic, 0 reduces over i and 1 over j.
    def _batch(self, leaves=None):
        """The batch axes of the expression: those of its leaves, broadcast."""
        leaves = self._leaves if leaves is None else leaves
        try:
            return np.broadcast_shapes(*[l.batch for l in leaves])
        except ValueError:
            shapes = ", ".join(str(l.batch) for l in leaves if l.batch)
            raise ValueError(f"LazyTensor: batch axes {shapes} do not broadcast") from None

    def _is_feature_axis(self, axis):
        """-1, or the axis after the batch axes, i and j (2 without batch axes)."""
        return axis == -1 or axis == len(self._batch()) + 2

    def sum(self, axis=-1, dim=None, **kw):
        axis = _pick_axis(axis, dim, "sum")
        if self._is_feature_axis(axis):
            return self._unary("Sum", 1)
        return self._reduce("Sum", axis, kw)

    def sum_reduction(self, axis=None, dim=None, **kw):
        return self._reduce("Sum", _pick_axis(axis, dim, "sum_reduction"), kw)

    def _inner_or_reduce(self, op, axis, dim, kw):
        axis = _pick_axis(axis, dim, op.lower())
        if self._is_feature_axis(axis):
            return self._unary(op, 1)
        return self._reduce(op, axis, kw)

    def min(self, axis=-1, dim=None, **kw): return self._inner_or_reduce("Min", axis, dim, kw)
    def max(self, axis=-1, dim=None, **kw): return self._inner_or_reduce("Max", axis, dim, kw)
    def argmin(self, axis=-1, dim=None, **kw): return self._inner_or_reduce("ArgMin", axis, dim, kw)
    def argmax(self, axis=-1, dim=None, **kw): return self._inner_or_reduce("ArgMax", axis, dim, kw)

    def min_argmin(self, axis=None, dim=None, **kw):
        return self._reduce("Min_ArgMin", _pick_axis(axis, dim, "min_argmin"), kw)

    def max_argmax(self, axis=None, dim=None, **kw):
        return self._reduce("Max_ArgMax", _pick_axis(axis, dim, "max_argmax"), kw)

    def Kmin(self, K, axis=None, dim=None, **kw):
        return self._reduce("KMin", _pick_axis(axis, dim, "Kmin"), kw, opt_arg=K)

    def argKmin(self, K, axis=None, dim=None, **kw):
        return self._reduce("ArgKMin", _pick_axis(axis, dim, "argKmin"), kw, opt_arg=K)

    def Kmin_argKmin(self, K, axis=None, dim=None, **kw):
        return self._reduce("KMin_ArgKMin", _pick_axis(axis, dim, "Kmin_argKmin"), kw, opt_arg=K)

    def logsumexp(self, axis=None, dim=None, weight=None, **kw):
        axis = _pick_axis(axis, dim, "logsumexp")
        if weight is None:
            return self._reduce("LogSumExp", axis, kw)
        return self._reduce("LogSumExp", axis, kw, weight=self._wrap(weight))

    def sumsoftmaxweight(self, weight, axis=None, dim=None, **kw):
        axis = _pick_axis(axis, dim, "sumsoftmaxweight")
        return self._reduce("SumSoftMaxWeight", axis, kw, weight=self._wrap(weight))

    def __matmul__(self, v):
        if not isinstance(v, np.ndarray) or v.ndim not in (1, 2):
            raise TypeError("@: the right operand must be a 1-D (M,) or 2-D (M, D) numpy array")
        b = LazyTensor(v.reshape(v.shape[0], -1)[None, :, :])
        out = (self * b).sum(dim=1)
        return out.reshape(-1) if v.ndim == 1 else out

    def _reduce(self, op, dim, kw, opt_arg=None, weight=None):
        check_backend(kw.pop("backend", "auto"), kw.pop("device_id", -1))
        # KeOps's block-sparse 6-tuple, given to the reduction or set as `K.ranges = ...`.
        ranges = kw.pop("ranges", None)
        if ranges is None:
            ranges = getattr(self, "ranges", None)
        if kw:
            raise TypeError(f"unsupported options: {', '.join(sorted(kw))}")
        leaves = list(self._leaves)
        if weight is not None:
            leaves += [l for l in weight._leaves if all(l is not k for k in leaves)]
        batch = self._batch(leaves)
        # With batch axes B..., the i and j axes come after them (dim = len(B) or len(B) + 1).
        nb = len(batch)
        if dim not in (nb, nb + 1, -2, -3):
            raise ValueError(f"dim: expected {nb} (reduce over i) or {nb + 1} (reduce over j), got {dim!r}")
        axis = 0 if dim in (nb, -3) else 1
        if batch and ranges is not None:
            raise ValueError("ranges: not with batch axes (one block-sparsity pattern per call)")
        position = {id(l): n for n, l in enumerate(leaves)}
        formula = _tree(self._node, position)
        formula2 = None if weight is None else _tree(weight._node, position)
        kf_name, k, formula2 = reduction_spec(op, opt_arg, formula2)
        variables = [(f"a{n}", l.category, l.dim) for n, l in enumerate(leaves)]
        kernel = build_kernel("lazy", variables, kf_name, axis_tag(axis, "dim"), formula,
                              k=k, weight=formula2)
        arrays = [l.data for l in leaves if not isinstance(l.data, float)]
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise TypeError("LazyTensor: all arrays must share one dtype (float32 or float64)")
        dtype = dtypes.pop() if dtypes else np.float64
        args = [np.array([l.data], dtype=dtype) if isinstance(l.data, float) else l.data for l in leaves]
        if ranges is None:
            return postprocess(op, kernel(*args))
        # dim=1 reduces over j.
        return postprocess(op, kernel.call_ranges(ranges_for(ranges, axis == 1), *args))

    def __repr__(self):
        return f"LazyTensor({_tree(self._node, {id(l): n for n, l in enumerate(self._leaves)})!r}, dim={self.ndim})"


def _pick_axis(axis, dim, method):
    """pykeops's `axis`/`dim` pair: `dim` wins when given."""
    axis = dim if dim is not None else axis
    if axis is None:
        raise TypeError(f"{method}: name the reduced axis, dim=0 (over i) or dim=1 (over j)")
    return axis


def _tree(root, position):
    """The formula tree ``build_kernel`` takes: each ``("leaf", leaf)`` becomes ``("Var", k)``,
    ``k`` the leaf's argument position. A loop, not recursion: a sum of thousands of terms is a
    tree as deep as it is long."""
    done = {}
    pending = [(root, False)]
    while pending:
        node, children_done = pending.pop()
        if id(node) in done:
            continue
        if node[0] == "leaf":
            done[id(node)] = ("Var", position[id(node[1])])
        elif not isinstance(node[-1], list):
            done[id(node)] = node
        elif children_done:
            done[id(node)] = node[:-1] + ([done[id(c)] for c in node[-1]],)
        else:
            pending.append((node, True))
            pending.extend((c, False) for c in node[-1] if id(c) not in done)
    return done[id(root)]


def Vi(x):
    """An i-variable from a 2-D array (N, D)."""
    return LazyTensor(x, axis=0)


def Vj(x):
    """A j-variable from a 2-D array (M, D)."""
    return LazyTensor(x, axis=1)


def Pm(x):
    """A parameter from a number or a 1-D array."""
    if isinstance(x, numbers.Real):
        return LazyTensor(float(x))
    return LazyTensor(np.asarray(x).reshape(-1))
