"""The same Genred and LazyTensor code through pykeops.numpy and through keops_rs: prints the
largest relative difference of each result (pykeops must be installed; it is not needed by the
tests). Run: python python/compare/pykeops_same_results.py"""

import sys

import numpy as np

try:
    import pykeops.numpy as pk
except ImportError:
    sys.exit("pykeops is not installed: pip install pykeops")

import keops_rs


def cases(lib):
    Genred, LazyTensor = lib.Genred, lib.LazyTensor
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 3))
    y = rng.standard_normal((400, 3))
    b = rng.standard_normal((400, 2))
    aliases = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]
    out = {}
    out["Genred Sum axis=1"] = Genred("Exp(-SqDist(x,y))*b", aliases, axis=1)(x, y, b)
    out["Genred Sum axis=0"] = Genred("Exp(-SqDist(x,y))*x", ["x = Vi(3)", "y = Vj(3)"], axis=0)(x, y)
    out["Genred positional aliases"] = Genred(
        "Exp(-SqDist(x,y))*b", ["b = Vj(2, 2)", "x = Vi(0, 3)", "y = Vj(1, 3)"], axis=1)(x, y, b)
    out["Genred LogSumExp"] = Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"],
                                     reduction_op="LogSumExp", axis=1)(x, y)
    out["Genred SumSoftMaxWeight"] = Genred("-SqDist(x,y)", aliases, reduction_op="SumSoftMaxWeight",
                                            axis=1, formula2="b")(x, y, b)
    out["Genred ArgKMin"] = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin",
                                   axis=1, opt_arg=5)(x, y)
    vals, idx = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Min_ArgMin", axis=0)(x, y)
    out["Genred Min_ArgMin values"], out["Genred Min_ArgMin indices"] = vals, idx
    x_i, y_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    D = ((x_i - y_j) ** 2).sum(-1)
    out["LazyTensor K @ b"] = (-D / 2.0).exp() @ b
    out["LazyTensor logsumexp"] = (-D).logsumexp(dim=1)
    out["LazyTensor argKmin"] = D.argKmin(3, dim=0)
    out["LazyTensor min"] = D.min(dim=1)
    out["LazyTensor argmax"] = (x_i | y_j).argmax(dim=1)
    out["LazyTensor K @ (M,) vector"] = (-D / 2.0).exp() @ b[:, 0].copy()
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    D32 = ((LazyTensor(x32[:, None, :]) - LazyTensor(y32[None, :, :])) ** 2).sum(-1)
    out["LazyTensor float32 sum"] = (-D32).exp().sum(dim=1)
    return out


def main():
    ours, theirs = cases(keops_rs), cases(pk)
    worst = 0.0
    for name in ours:
        a, b = np.asarray(ours[name]), np.asarray(theirs[name])
        same_form = a.shape == b.shape and a.dtype == b.dtype
        diff = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) if a.shape == b.shape else float("inf")
        worst = max(worst, diff if same_form else float("inf"))
        print(f"{name:32s} shape {a.shape} {a.dtype} vs {b.shape} {b.dtype}: relative difference {diff:.2e}")
    print(f"largest: {worst:.2e}")
    # float32 results differ by rounding (summation order): a few units in the 7th digit
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
