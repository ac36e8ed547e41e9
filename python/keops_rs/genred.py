"""``Genred``: pykeops.numpy's generic reduction, compiled by keops-rs.

A Genred is a kernel built by ``build_kernel`` from structured data: the aliases become its
arguments (in their positional order), the reduction is named with its K or weight, and the
formula text (KeOps syntax) is read by keops-rs's own parser where it stands in the kernel, so an
error in it raises ``KfError`` with the diagnostic. ``Genred.source`` is the kernel's ``.kf`` text.
"""

import re

import numpy as np

from ._keops_rs import build_kernel, reduction_kinds

_ALIAS = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(Vi|Vj|Pm)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)\s*$"
)

# The reductions as the compiler defines them (`ReductionKind`): .kf name -> (takes K, takes the
# weight formula2, what the output holds).
_KINDS = {name: (takes_k, takes_weight, output) for name, takes_k, takes_weight, output in reduction_kinds()}

# pykeops's names that are not the .kf name of the same reduction: pykeops's spellings without
# the underscore, and its LogSumExpWeight (which returns the pair (m, s)).
_PYKEOPS_NAMES = {
    "MinArgMin": "Min_ArgMin",
    "MaxArgMax": "Max_ArgMax",
    "KMinArgKMin": "KMin_ArgKMin",
    "LogSumExpWeight": "Max_SumShiftExpWeight",
    "SoftMax": "SumSoftMaxWeight",
}

# pykeops's reduction names -> (the .kf reduction, takes K, takes the weight formula2)
_REDUCTIONS = {
    name: (kf, _KINDS[kf][0], _KINDS[kf][1])
    for name, kf in [(k, k) for k in _KINDS] + list(_PYKEOPS_NAMES.items())
}

# Reductions whose output is indices only (int64, as pykeops returns them) or values then
# indices (a pair of arrays).
_INDICES = {name for name, kind in _KINDS.items() if kind[2] == "indices"}
_VALUES_AND_INDICES = {name for name, kind in _KINDS.items() if kind[2] == "values_and_indices"}


def parse_aliases(aliases):
    """``["x = Vi(3)", "y = Vj(0, 3)", ...]`` -> ``[(name, "Vi"|"Vj"|"Pm", dim), ...]`` in
    positional order. An alias without a position takes its place in the list."""
    if isinstance(aliases, str):
        raise TypeError("aliases: expected a list of strings such as \"x = Vi(3)\", not a string")
    parsed = []
    for place, alias in enumerate(aliases):
        if not isinstance(alias, str):
            raise TypeError(f"aliases[{place}]: expected a string such as \"x = Vi(3)\", not {type(alias).__name__}")
        m = _ALIAS.match(alias)
        if m is None:
            raise ValueError(
                f"aliases[{place}]: {alias!r} is not of the form \"name = Vi(dim)\", "
                "\"name = Vj(dim)\", \"name = Pm(dim)\" or with a position, \"name = Vi(pos, dim)\""
            )
        name, category, first, second = m.groups()
        pos, dim = (place, int(first)) if second is None else (int(first), int(second))
        if dim < 1:
            raise ValueError(f"aliases[{place}]: {alias!r} has dimension {dim}; it must be at least 1")
        parsed.append((pos, name, category, dim, place))
    names = [p[1] for p in parsed]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"aliases: `{name}` is declared twice")
    positions = sorted(p[0] for p in parsed)
    if positions != list(range(len(parsed))):
        raise ValueError(
            f"aliases: the positions {positions} must be 0, 1, ..., {len(parsed) - 1}, each once"
        )
    return [(name, cat, dim) for _, name, cat, dim, _ in sorted(parsed)]


def axis_tag(axis, what="axis"):
    """pykeops's axis (1: reduce over j, output per i) -> the .kf reduction axis (0)."""
    if axis not in (0, 1):
        raise ValueError(f"{what}: expected 0 (reduce over i) or 1 (reduce over j), got {axis!r}")
    return 1 - axis


def reduction_spec(reduction_op, opt_arg=None, formula2=None):
    """pykeops's reduction -> ``(the .kf reduction, K or None, the weight formula or None)``,
    as ``build_kernel`` takes them."""
    if reduction_op not in _REDUCTIONS:
        known = ", ".join(sorted(_REDUCTIONS))
        raise ValueError(f"reduction_op: {reduction_op!r} is not supported (supported: {known})")
    kf_name, takes_k, takes_weight = _REDUCTIONS[reduction_op]
    if reduction_op == "LogSumExp" and formula2 is not None:
        kf_name, takes_weight = "LogSumExpWeight", True
    k = None
    if takes_k:
        if not isinstance(opt_arg, (int, np.integer)) or isinstance(opt_arg, bool) or opt_arg < 1:
            raise ValueError(f"opt_arg: {reduction_op} needs the number K of neighbours as a positive int, got {opt_arg!r}")
        k = int(opt_arg)
    if takes_weight:
        if formula2 is None:
            raise ValueError(f"formula2: {reduction_op} needs its weight formula in formula2")
    elif formula2 is not None:
        raise ValueError(f"formula2: {reduction_op} takes no second formula")
    return kf_name, k, formula2


def postprocess(reduction_op, out):
    """pykeops's forms: indices as int64; values and indices as a pair."""
    kf_name = _REDUCTIONS[reduction_op][0]
    if kf_name in _INDICES:
        return out.astype(np.int64)
    if kf_name in _VALUES_AND_INDICES:
        half = out.shape[-1] // 2
        return out[..., :half].copy(), out[..., half:].astype(np.int64)
    return out


def check_backend(backend, device_id=-1):
    if backend not in ("auto", "CPU", "cpu"):
        raise ValueError(f"backend: {backend!r} is not available; keops_rs runs on the CPU (backend=\"auto\" or \"CPU\")")


def ranges_for(ranges, reduces_over_j):
    """The three arrays of KeOps's 6-tuple ``(ranges_i, slices_i, redranges_j, ranges_j,
    slices_j, redranges_i)`` that a reduction over j (or over i) reads, as lists of ints."""
    if not isinstance(ranges, (tuple, list)) or len(ranges) != 6:
        raise ValueError("ranges: expected KeOps's 6-tuple (ranges_i, slices_i, redranges_j, "
                         "ranges_j, slices_j, redranges_i)")
    names = ("ranges_i", "slices_i", "redranges_j", "ranges_j", "slices_j", "redranges_i")
    arrays = []
    for name, a in zip(names, ranges):
        a = np.asarray(a)
        if a.dtype.kind not in "iu":
            raise TypeError(f"ranges: {name} has dtype {a.dtype}; expected integers")
        if (a < 0).any():
            raise ValueError(f"ranges: {name} holds a negative number")
        arrays.append(a)
    rows, slices, inner = arrays[:3] if reduces_over_j else arrays[3:]
    for name, a, shape in ((names[0 if reduces_over_j else 3], rows, 2), (names[2 if reduces_over_j else 5], inner, 2)):
        if a.ndim != 2 or a.shape[1] != shape:
            raise ValueError(f"ranges: {name} has shape {a.shape}; expected (n, 2)")
    return ([tuple(map(int, r)) for r in rows], [int(s) for s in slices.reshape(-1)],
            [tuple(map(int, r)) for r in inner])


class Genred:
    """``Genred(formula, aliases, reduction_op="Sum", axis=0, dtype=None, opt_arg=None,
    formula2=None)``, as ``pykeops.numpy.Genred``. ``axis=1`` reduces over j (one output row
    per i), ``axis=0`` over i. ``dtype`` is accepted for compatibility: the inputs' dtype
    (float32 or float64) decides."""

    def __init__(self, formula, aliases, reduction_op="Sum", axis=0, dtype=None, opt_arg=None,
                 formula2=None, **options):
        if not isinstance(formula, str):
            raise TypeError(f"formula: expected a string, not {type(formula).__name__}")
        if dtype not in (None, "float32", "float64", np.float32, np.float64):
            raise TypeError(f"dtype: {dtype!r} is not supported; use float32 or float64")
        self.formula = formula
        self.aliases = list(aliases)
        self.reduction_op = reduction_op
        self.axis = axis
        self.opt_arg = opt_arg
        self.formula2 = formula2
        if formula2 is not None and not isinstance(formula2, str):
            raise TypeError(f"formula2: expected a string, not {type(formula2).__name__}")
        variables = parse_aliases(self.aliases)
        kf_name, k, weight = reduction_spec(reduction_op, opt_arg, formula2)
        self.kernel = build_kernel("genred", variables, kf_name, axis_tag(axis), formula,
                                   k=k, weight=weight)
        self.source = self.kernel.source

    def __call__(self, *args, backend="auto", device_id=-1, ranges=None, out=None):
        check_backend(backend, device_id)
        if ranges is None:
            raw = self.kernel(*args)
        else:
            # pykeops's axis=1 reduces over j.
            raw = self.kernel.call_ranges(ranges_for(ranges, self.axis == 1), *args)
        result = postprocess(self.reduction_op, raw)
        if out is not None:
            out[...] = result
            return out
        return result

    def __repr__(self):
        return f"Genred({self.formula!r}, {self.aliases!r}, reduction_op={self.reduction_op!r}, axis={self.axis})"
