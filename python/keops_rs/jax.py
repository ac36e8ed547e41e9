"""keops_rs.jax: keops-rs kernels inside JAX programs.

- ``Kernel(source, name=None)``: a ``.kf`` kernel called on jax arrays.
- ``Genred(formula, aliases, reduction_op="Sum", axis=0, ...)``: as ``keops_rs.Genred``.
- ``KernelOperator(kernel, operand=None, normalize="", **inputs)``: a ``Sum`` kernel linear in
  one argument as a linear operator on jax arrays (``A(v)``, ``A @ v``), normalised for
  diffusion geometry or not: what ``jax.scipy.sparse.linalg.cg`` and friends take, jittable and
  differentiable (``keops_rs.linalg`` is its numpy counterpart).

Both work under ``jax.jit`` (the compiled program calls the kernel through an XLA FFI custom
call on the CPU: no Python, no host callback), ``jax.grad`` / ``jax.vjp`` with respect to any
float input (a ``jax.custom_vjp`` whose backward is one more custom call running the generated
backward kernels of exactly the inputs being differentiated), and ``jax.vmap`` over leading
batch axes of any inputs: the forward is one custom call for the whole batch (its arrays carry
the batch axes, every batch in one parallel region), and so is the backward. float32, and
float64 with ``jax_enable_x64``.

Errors are raised at trace time, where shapes are known, as in the numpy API: ``KfError`` for
source that does not compile, ``TypeError``/``ValueError`` naming the argument.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from . import _keops_rs
from ._keops_rs import Kernel as _NumpyKernel
from ._keops_rs import KfError
from .genred import Genred as _NumpyGenred
from .genred import _INDICES, _REDUCTIONS, _VALUES_AND_INDICES, check_backend, ranges_for

__all__ = ["Kernel", "Genred", "KernelOperator", "KfError"]

for _target, _capsule in _keops_rs._jax_targets():
    jax.ffi.register_ffi_target(_target, _capsule, platform="cpu")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@jax.tree_util.register_pytree_node_class
class _Residuals:
    """What the backward pass needs: the inputs, the forward output, and (static) the
    positions of the inputs being differentiated."""

    def __init__(self, inputs, output, wrt):
        self.inputs = inputs
        self.output = output
        self.wrt = wrt

    def tree_flatten(self):
        return (self.inputs, self.output), self.wrt

    @classmethod
    def tree_unflatten(cls, wrt, children):
        return cls(children[0], children[1], wrt)


class Kernel:
    """A compiled ``.kf`` kernel called on jax arrays: ``Kernel(source, name=None)``, then
    ``k(x, y, b, s)`` (positional in declaration order, or by keyword). The output is
    ``(N, Dout)`` (reduction over j) or ``(M, Dout)`` (over i) in the inputs' dtype."""

    def __init__(self, source, name=None):
        # A kernel already compiled (keops_rs.Kernel, e.g. a Genred's) is used as it is.
        if isinstance(source, _NumpyKernel):
            self._kernel = source
        else:
            self._kernel = _NumpyKernel(source, name)
        self._id = _keops_rs._jax_kernel(self._kernel)
        self._python_signature = inspect.Signature(
            [inspect.Parameter(a[0], inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in self.arguments]
        )
        self._call = jax.custom_vjp(self._forward)
        self._call.defvjp(self._forward_saving, self._backward, symbolic_zeros=True)
        # Block-sparse calls: the pattern's id is static (not differentiated).
        self._call_ranged = jax.custom_vjp(self._forward_ranged, nondiff_argnums=(0,))
        self._call_ranged.defvjp(self._forward_ranged_saving, self._backward_ranged,
                                 symbolic_zeros=True)

    name = property(lambda self: self._kernel.name, doc="The kernel's name.")
    signature = property(lambda self: self._kernel.signature, doc="The signature, printable.")
    arguments = property(lambda self: self._kernel.arguments,
                         doc="The arguments in order, as (name, \"Vi\"|\"Vj\"|\"Pm\", dim).")
    output_dim = property(lambda self: self._kernel.output_dim, doc="The output's width Dout.")
    axis = property(lambda self: self._kernel.axis,
                    doc="0 when the output has one row per i (reducing over j), 1 per j.")
    reduction = property(lambda self: self._kernel.reduction, doc="The reduction, as .kf writes it.")

    def __call__(self, *args, **kwargs):
        return self._call(*self._bind(args, kwargs))

    def call_ranges(self, ranges, *args, **kwargs):
        """The kernel over the pairs ``ranges`` keeps (block-sparse): KeOps's 6-tuple
        ``(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)`` of numpy
        integer arrays (``keops_rs.cluster.from_matrix``), both halves, since gradients reduce
        over both axes. Differentiable as a plain call; under ``jax.vmap`` the batches run one
        after the other. The ranges must be concrete (not traced) arrays."""
        for a in ranges if isinstance(ranges, (tuple, list)) else ():
            if isinstance(a, jax.core.Tracer):
                raise TypeError("ranges: expected concrete (numpy) integer arrays, not traced values")
        over_j, over_i = ranges_for(ranges, True), ranges_for(ranges, False)
        pattern = _keops_rs._jax_ranges(over_j, over_i)
        return self._call_ranged(pattern, *self._bind(args, kwargs))

    def _bind(self, args, kwargs):
        try:
            bound = self._python_signature.bind(*args, **kwargs)
        except TypeError as e:
            names = ", ".join(f"`{a[0]}`" for a in self.arguments)
            raise TypeError(f"kernel `{self.name}` (arguments {names}): {e}") from None
        values = [bound.arguments[a[0]] for a in self.arguments]
        arrays = _as_arrays([a[0] for a in self.arguments], values)
        # The 2-D forms, `(N, 1)` for a dimension-1 variable given as `(N,)` and `(1,)` for a
        # scalar parameter: under vmap, a batch axis is then told apart from the rows.
        # As given, but for a 0-d value, which every argument of dimension 1 accepts as (1,).
        given = [a[None] if a.ndim == 0 else a for a in arrays]
        arrays = [
            a[:, None] if cat in ("Vi", "Vj") and a.ndim == 1 else a[None] if a.ndim == 0 else a
            for a, (_, cat, _) in zip(arrays, self.arguments)
        ]
        # Checked here, at trace time, with the messages of the numpy API; a shape that does
        # not fit is named as the caller gave it, not as promoted above.
        try:
            self._output_shape(arrays)
        except ValueError:
            self._output_shape(given)
            raise
        return arrays

    def _output_shape(self, arrays):
        return _keops_rs._jax_output_shape(
            self._id, [tuple(a.shape) for a in arrays], [str(a.dtype) for a in arrays]
        )

    def _forward(self, *arrays, ranges=-1):
        dtype = arrays[0].dtype if arrays else jnp.result_type(float)
        out = jax.ShapeDtypeStruct(self._output_shape(arrays), dtype)
        # Under vmap the arrays get the batch axes (1 for an input not mapped over), which
        # the handler broadcasts: one call for the whole batch. Block-sparse calls take one
        # batch at a time.
        vmap_method = "expand_dims" if ranges < 0 else "sequential"
        call = jax.ffi.ffi_call("keops_rs_call", out, vmap_method=vmap_method)
        return call(*arrays, kernel=np.int64(self._id), ranges=np.int64(ranges))

    def _forward_saving(self, *primals, ranges=-1):
        inputs = tuple(p.value for p in primals)
        wrt = tuple(k for k, p in enumerate(primals) if p.perturbed)
        out = self._forward(*inputs, ranges=ranges)
        return out, _Residuals(inputs, out, wrt)

    def _forward_ranged(self, pattern, *arrays):
        return self._forward(*arrays, ranges=pattern)

    def _forward_ranged_saving(self, pattern, *primals):
        return self._forward_saving(*primals, ranges=pattern)

    def _backward_ranged(self, pattern, residuals, g):
        return self._backward(residuals, g, ranges=pattern)

    def _backward(self, residuals, g, ranges=-1):
        inputs, wrt = residuals.inputs, residuals.wrt
        grads = [None] * len(inputs)
        if not wrt or isinstance(g, SymbolicZero):
            return tuple(grads)
        dtype = inputs[0].dtype
        # Compiled once per (kernel, inputs, dtype); raises ValueError for a reduction without
        # a gradient (ArgMin, ...).
        plan, reads_output = _keops_rs._jax_backward(
            self._id, [self.arguments[k][0] for k in wrt], str(dtype)
        )
        args = list(inputs) + [g.astype(dtype)]
        if reads_output:
            args.append(residuals.output)
        shapes = [jax.ShapeDtypeStruct(inputs[k].shape, dtype) for k in wrt]
        # Under vmap, one call for the whole batch too (the handler reads the batch axes);
        # block-sparse ones one batch at a time.
        vmap_method = "expand_dims" if ranges < 0 else "sequential"
        call = jax.ffi.ffi_call("keops_rs_vjp", shapes, vmap_method=vmap_method)
        for k, grad in zip(wrt, call(*args, plan=np.int64(plan), ranges=np.int64(ranges))):
            grads[k] = grad
        return tuple(grads)

    def __repr__(self):
        return f"keops_rs.jax.Kernel({self.signature})"


def _as_arrays(names, values):
    """jax arrays (or tracers) of float32/float64 for each argument; numpy arrays are
    converted, Python numbers take the dtype of the array arguments."""
    arrays = [None] * len(values)
    for k, (name, v) in enumerate(zip(names, values)):
        if isinstance(v, (bool, np.bool_)) or isinstance(v, (str, bytes)) or v is None:
            raise TypeError(f"argument `{name}` must be a jax or numpy array of float32 or float64, "
                            f"not {type(v).__name__}")
        if isinstance(v, (int, float)):
            continue
        if not hasattr(v, "dtype") or not hasattr(v, "shape"):
            raise TypeError(f"argument `{name}` must be a jax or numpy array of float32 or float64, "
                            f"not {type(v).__name__}")
        if np.dtype(v.dtype) not in _FLOATS:
            raise TypeError(f"argument `{name}` has dtype {v.dtype}; expected float32 or float64")
        arrays[k] = jnp.asarray(v)
    given = [a.dtype for a in arrays if a is not None]
    scalar_dtype = given[0] if given else jnp.result_type(float)
    for k, v in enumerate(values):
        if arrays[k] is None:
            arrays[k] = jnp.asarray(v, dtype=scalar_dtype)
    return arrays


class Genred:
    """``Genred(formula, aliases, reduction_op="Sum", axis=0, dtype=None, opt_arg=None,
    formula2=None)`` on jax arrays: the signature and defaults of ``keops_rs.Genred``
    (pykeops's), the same ``.kf`` kernel. Indices come back as jax's int64 (int32 unless
    ``jax_enable_x64``); ``Min_ArgMin``-style reductions as a pair (values, indices)."""

    def __init__(self, formula, aliases, reduction_op="Sum", axis=0, dtype=None, opt_arg=None,
                 formula2=None, **options):
        numpy_genred = _NumpyGenred(formula, aliases, reduction_op, axis, dtype, opt_arg,
                                    formula2, **options)
        self.formula = formula
        self.aliases = numpy_genred.aliases
        self.reduction_op = reduction_op
        self.axis = axis
        self.opt_arg = opt_arg
        self.formula2 = formula2
        self.source = numpy_genred.source
        self.kernel = Kernel(numpy_genred.kernel)

    def __call__(self, *args, backend="auto", device_id=-1, ranges=None):
        """``ranges``: KeOps's 6-tuple of numpy integer arrays (block-sparse, differentiable;
        see ``Kernel.call_ranges``)."""
        check_backend(backend, device_id)
        out = self.kernel(*args) if ranges is None else self.kernel.call_ranges(ranges, *args)
        kf_name = _REDUCTIONS[self.reduction_op][0]
        index_dtype = jax.dtypes.canonicalize_dtype(np.int64)
        if kf_name in _INDICES:
            return out.astype(index_dtype)
        if kf_name in _VALUES_AND_INDICES:
            half = out.shape[-1] // 2
            return out[..., :half], out[..., half:].astype(index_dtype)
        return out

    def __repr__(self):
        return (f"keops_rs.jax.Genred({self.formula!r}, {self.aliases!r}, "
                f"reduction_op={self.reduction_op!r}, axis={self.axis})")


class KernelOperator:
    """A ``Sum`` kernel linear in its argument ``operand`` (``K(...) * b``) as the matrix ``K``
    acting on jax arrays, every other argument fixed by name in ``inputs``: ``A(v)`` or
    ``A @ v`` for ``v`` of shape ``(M,)`` or ``(M, ncols)``, in ``ceil(ncols / R)`` kernel
    calls (``R`` the operand's dimension). It is a plain function of jax arrays: it runs under
    ``jax.jit``, ``jax.grad`` goes through it (the kernel's backward kernels), and
    ``jax.scipy.sparse.linalg.cg(A, b)`` (or ``bicgstab``, ``gmres``) takes it as it is.

    ``normalize`` takes the steps of ``keops_rs.linalg.normalize`` (``"row"``: ``D^-1 K``,
    ``"sym"``: ``D^-1/2 K D^-1/2``, ``"alpha=A"``: ``D^-A K D^-A``, comma-separated and applied
    in order), each step's degrees computed by one product with ones when the operator is made.
    The operator may be made inside ``jax.jit`` or ``jax.grad`` from traced inputs (the points
    of ``P(X)``): its degrees are then traced too, and a degree that is not positive, an error
    on concrete inputs, makes its row and column NaN. The operand is found as in
    ``keops_rs.linalg.KernelOperator`` when left out. Linearity is the caller's claim here
    (``keops_rs.linalg.KernelOperator`` probes it)."""

    def __init__(self, kernel, operand=None, normalize="", **inputs):
        self.kernel = kernel if isinstance(kernel, Kernel) else Kernel(kernel)
        k = self.kernel
        if not k.reduction.startswith("Sum_Reduction"):
            raise ValueError(f"kernel `{k.name}` reduces by {k.reduction}: only Sum is linear")
        reduced = "Vj" if k.axis == 0 else "Vi"
        output_category = "Vi" if k.axis == 0 else "Vj"
        names = [a[0] for a in k.arguments]
        spec = {n: (c, d) for n, c, d in k.arguments}
        for name in inputs:
            if name not in spec:
                raise ValueError(f"unknown argument `{name}`: the kernel's arguments are {', '.join(names)}")
        if operand is None:
            candidates = [n for n, (c, d) in spec.items()
                          if c == reduced and d == k.output_dim and n not in inputs]
            if len(candidates) != 1:
                raise ValueError("name the argument the operator multiplies with operand=... "
                                 f"(candidates: {', '.join(candidates) or 'none'})")
            operand = candidates[0]
        if operand not in spec or spec[operand][0] != reduced or spec[operand][1] != k.output_dim:
            raise ValueError(f"`{operand}` cannot be the operand: it must be a {reduced} variable "
                             f"of the output's dimension {k.output_dim}")
        missing = [n for n in names if n != operand and n not in inputs]
        if missing:
            raise ValueError(f"missing argument(s): {', '.join(missing)}")
        self.operand = operand
        self.width = k.output_dim
        self._names = names
        self._inputs = {n: jnp.asarray(a) for n, a in inputs.items()}
        self.dtype = next(iter(self._inputs.values())).dtype if self._inputs else jnp.float32
        rows_of = lambda cat: next(  # noqa: E731
            (a.shape[0] for n, a in self._inputs.items() if spec[n][0] == cat), None)
        cols = rows_of(reduced)
        if cols is None:
            raise ValueError(f"no argument but the operand `{operand}` is a {reduced} variable: "
                             "nothing gives the operator's number of columns")
        self.shape = (rows_of(output_category) or 1, cols)
        self._left = jnp.ones(self.shape[0], self.dtype)
        self._right = jnp.ones(self.shape[1], self.dtype)
        for step in [s.strip() for s in normalize.split(",") if s.strip()]:
            if step == "row":
                exponents = (-1.0, 0.0)
            elif step == "sym":
                exponents = (-0.5, -0.5)
            elif step.startswith("alpha="):
                a = float(step[len("alpha="):])
                exponents = (-a, -a)
            else:
                raise ValueError(f"normalize: unknown step `{step}` (row, sym, alpha=A)")
            if self.shape[0] != self.shape[1]:
                raise ValueError(f"normalize needs a square operator; this one is {self.shape}")
            degrees = self(jnp.ones(self.shape[1], self.dtype))
            if not isinstance(degrees, jax.core.Tracer) and not bool(jnp.all(degrees > 0)):
                raise ValueError("normalize: a degree is not positive")
            # Traced (the points are a jit or grad argument), degrees have no values to check:
            # a degree that is not positive makes its row and column NaN instead.
            positive = jnp.where(degrees > 0, degrees, jnp.nan)
            self._left = self._left * positive ** exponents[0]
            self._right = self._right * positive ** exponents[1]

    def _pass(self, block):
        args = dict(self._inputs)
        args[self.operand] = block
        return self.kernel(*[args[n] for n in self._names])

    def __call__(self, v):
        v = jnp.asarray(v)
        vector = v.ndim == 1
        x = (v[:, None] if vector else v).astype(self.dtype) * self._right[:, None]
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"the operand has {x.shape[0]} rows; the operator has {self.shape[1]} columns")
        ncols, r = x.shape[1], self.width
        pieces = []
        for first in range(0, ncols, r):
            block = x[:, first:first + r]
            taken = block.shape[1]
            if taken < r:
                block = jnp.concatenate([block, jnp.zeros((block.shape[0], r - taken), block.dtype)], 1)
            pieces.append(self._pass(block)[:, :taken])
        out = (jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]) * self._left[:, None]
        return out[:, 0] if vector else out

    def __matmul__(self, v):
        return self(v)

    matvec = __call__

    def __repr__(self):
        return (f"keops_rs.jax.KernelOperator({self.shape[0]} x {self.shape[1]} on "
                f"`{self.operand}` of width {self.width}, {self.dtype})")
