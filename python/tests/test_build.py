"""keops_rs.build_kernel: kernels from formula trees, against `.kf` text and dense numpy."""

import numpy as np
import pytest

import keops_rs
from keops_rs import KfError, LazyTensor, Vi, Vj, build_kernel
from conftest import GAUSS, gauss_data, gauss_dense, sqdist
from test_errors import run_child

X, Y, B, S = ("Var", 0), ("Var", 1), ("Var", 2), ("Var", 3)
GAUSS_ARGS = [("x", "Vi", 3), ("y", "Vj", 3), ("b", "Vj", 1), ("s", "Pm", 1)]
# Exp(-SqDist(x, y) / (2 * s * s)) * b, as examples/kf/gauss.kf writes it
GAUSS_TREE = ("Mult", [
    ("Exp", [("Divide", [("Minus", [("SqDist", [X, Y])]),
                         ("Mult", [("Mult", [("IntCst", 2), S]), S])])]),
    B,
])


def test_a_tree_gives_the_kernel_of_the_same_text(rng):
    k = build_kernel("gauss", GAUSS_ARGS, "Sum", 0, GAUSS_TREE)
    x, y, b, s = gauss_data(rng)
    np.testing.assert_allclose(k(x, y, b, s), gauss_dense(x, y, b, s), rtol=1e-12)
    np.testing.assert_allclose(k(x, y, b, s), keops_rs.Kernel(GAUSS)(x, y, b, s), rtol=1e-13)
    assert k.arguments == [(n, c, d) for n, c, d in GAUSS_ARGS]
    assert k.output_dim == 1 and k.axis == 0 and k.reduction == "Sum_Reduction"
    assert "Sum_Reduction(Mult(Exp(Divide(Minus(SqDist(x, y)), Mult(Mult(IntCst(2), s), s))), b), 0)" in k.source
    # The printed text is .kf: it compiles to the same kernel.
    again = keops_rs.Kernel(k.source)
    assert again.signature == k.signature
    np.testing.assert_allclose(again(x, y, b, s), k(x, y, b, s), rtol=0)


def test_gradients_of_a_built_kernel(rng):
    k = build_kernel("gauss", GAUSS_ARGS, "Sum", 0, GAUSS_TREE)
    text = keops_rs.Kernel(GAUSS)
    x, y, b, s = gauss_data(rng)
    g = rng.standard_normal((x.shape[0], 1))
    for name in ("x", "y", "b", "s"):
        np.testing.assert_allclose(k.vjp(name, g, x, y, b, s), text.vjp(name, g, x, y, b, s), rtol=1e-12)


def test_parameters_interleave_with_operands_as_the_operator_takes_them(rng):
    x, y = rng.standard_normal((7, 4)), rng.standard_normal((5, 4))
    # Extract(x, 1, 2) ** 3 . Elem(y, 0) * 2.5 - 0.5, and TensorDot(x, y, [4], [4], [0], [0])
    tree = ("Add", [
        ("Subtract", [
            ("Mult", [("Scalprod", [("Pow", 3, [("Extract", 1, 2, [X])]), ("Extract", 0, 2, [Y])]),
                      ("Const", 2.5)]),
            ("Const", 0.5),
        ]),
        ("TensorDot", (4,), (4,), (0,), (0,), [X, Y]),
    ])
    k = build_kernel("params", [("x", "Vi", 4), ("y", "Vj", 4)], "Sum", 0, tree)
    ref = ((x[:, None, 1:3] ** 3) * y[None, :, 0:2]).sum(-1) * 2.5 - 0.5 + x @ y.T
    np.testing.assert_allclose(k(x, y)[:, 0], ref.sum(1), rtol=1e-12)
    assert "Extract(x, 1, 2)" in k.source and "TensorDot(x, y, [4], [4], [0], [0])" in k.source


def test_k_weights_axis_and_text_formulas(rng):
    x, y = rng.standard_normal((9, 3)), rng.standard_normal((6, 3))
    d = sqdist(x, y)
    args = [("x", "Vi", 3), ("y", "Vj", 3)]
    knn = build_kernel("knn", args, "ArgKMin", 1, ("SqDist", [X, Y]), k=2)
    np.testing.assert_array_equal(knn(x, y), np.argsort(d.T, axis=1, kind="stable")[:, :2])
    v = rng.standard_normal((6, 2))
    soft = build_kernel("soft", args + [("v", "Vj", 2)], "SumSoftMaxWeight", 0,
                        "-SqDist(x, y)", weight=("Var", 2))
    w = np.exp(-d)
    np.testing.assert_allclose(soft(x, y, v), (w @ v) / w.sum(1, keepdims=True), rtol=1e-12)


def test_checker_errors_are_the_compilers_diagnostics():
    args = [("x", "Vi", 3), ("y", "Vj", 2)]
    with pytest.raises(KfError, match="dimension mismatch in `Add`") as e:
        build_kernel("bad", args, "Sum", 0, ("Add", [X, Y]))
    assert "<source>:" in str(e.value) and "Add(x, y)" in str(e.value)
    with pytest.raises(KfError, match="unknown operator `Exq`") as e:
        build_kernel("bad", args, "Sum", 0, ("Exq", [X]))
    assert "did you mean `Exp`" in str(e.value)
    with pytest.raises(KfError, match="`Exp` takes 1 argument, but 2 were given"):
        build_kernel("bad", args, "Sum", 0, ("Exp", [X, X]))
    with pytest.raises(KfError, match="unknown reduction `Summ_Reduction`"):
        build_kernel("bad", args, "Summ", 0, X)
    with pytest.raises(KfError, match=r"unknown variable `z`"):
        build_kernel("bad", args, "Sum", 0, "Exp(z)")
    with pytest.raises(KfError, match=":4:"):   # a syntax error in a text formula points at it
        build_kernel("bad", args, "Sum", 0, "SqDist(x, y")


@pytest.mark.parametrize(
    "call,exc,needle",
    [
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 0, ('Exp', [('Var', 1)]))", ValueError, "formula[0]: (\"Var\", k)"),
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 0, ('Exp', [('Add', [('Var', 0), 3.0])]))", TypeError, "formula[0][1]"),
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 0, ('Exp', [('Var', 0)]), weight=['nope'])", ValueError, "weight"),
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 0, ('Const', float('nan')))", ValueError, "formula: (\"Const\", x)"),
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 0, ('Extract', 0.5, 1, [('Var', 0)]))", TypeError, "parameter 1 of `Extract`"),
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 0, (3,))", TypeError, "formula: a node starts"),
        ("build_kernel('k', [('x', 'Vq', 3)], 'Sum', 0, ('Var', 0))", ValueError, "args[0]"),
        ("build_kernel('k', [('x', 'Vi', 0)], 'Sum', 0, ('Var', 0))", ValueError, "args[0]"),
        ("build_kernel('k', [('x', 'Vi', 3), ('x', 'Vj', 3)], 'Sum', 0, ('Var', 0))", ValueError, "args[1]"),
        ("build_kernel('k', [('1x', 'Vi', 3)], 'Sum', 0, ('Var', 0))", ValueError, "args[0]"),
        ("build_kernel('k', 'x', 'Sum', 0, ('Var', 0))", TypeError, "args[0]"),
        ("build_kernel('k w', [('x', 'Vi', 3)], 'Sum', 0, ('Var', 0))", ValueError, "name"),
        ("build_kernel('k', [('x', 'Vi', 3)], 'Sum', 2, ('Var', 0))", ValueError, "axis"),
        ("build_kernel('k', [('x', 'Vi', 1)], 'KMin', 0, ('Var', 0))", ValueError, "k:"),
        ("build_kernel('k', [('x', 'Vi', 1)], 'KMin', 0, ('Var', 0), k=0)", ValueError, "k:"),
        ("build_kernel('k', [('x', 'Vi', 1)], 'Sum', 0, ('Var', 0), k=2)", ValueError, "k:"),
        ("build_kernel('k', [('x', 'Vi', 1)], 'SumSoftMaxWeight', 0, ('Var', 0))", ValueError, "weight:"),
        ("build_kernel('k', [('x', 'Vi', 1)], 'Sum', 0, ('Var', 0), weight=('Var', 0))", ValueError, "weight:"),
    ],
)
def test_malformed_data_names_the_argument(call, exc, needle):
    with pytest.raises(exc) as e:
        eval(call)
    assert needle in str(e.value), str(e.value)


def test_deep_trees_do_not_crash():
    # 20000 nested nodes through build_kernel and through LazyTensor: reading the tree, laying
    # out its text, checking it, rendering the diagnostic and dropping everything; an unknown
    # operator at the bottom keeps the test to the front end.
    lines = run_child(
        """
        tree = ("Foo", [("Var", 0)])
        for _ in range(20000):
            tree = ("Exp", [tree])
        expect(keops_rs.KfError, lambda: keops_rs.build_kernel("deep", [("x", "Vi", 1)], "Sum", 0, tree))
        t = keops_rs.LazyTensor(np.ones((4, 1, 1)))._unary("Foo")
        for _ in range(20000):
            t = t.exp()
        expect(keops_rs.KfError, lambda: t.sum(dim=1))
        """
    )
    assert len(lines) == 2
    assert all(line.startswith("KfError: ") and "Foo" in line for line in lines), lines


def test_a_long_lazytensor_sum_compiles(rng):
    # A left-deep tree 300 levels deep, compiled and run.
    x, y = rng.standard_normal((8, 2)), rng.standard_normal((5, 2))
    x_i, y_j = Vi(x), Vj(y)
    t = x_i.sqdist(y_j)
    for k in range(300):
        t = t + y_j.sqnorm2() * float(k % 3)
    ref = sqdist(x, y) + (y ** 2).sum(1)[None, :] * sum(k % 3 for k in range(300))
    np.testing.assert_allclose(t.sum(dim=1)[:, 0], ref.sum(1), rtol=1e-10)


def test_lazytensor_builds_the_tree():
    t = (-Vi(np.ones((3, 2))).sqdist(Vj(np.ones((4, 2))))).exp() ** 3
    assert repr(t) == "LazyTensor(('Pow', 3, [('Exp', [('Minus', [('SqDist', [('Var', 0), ('Var', 1)])])])]), dim=1)"
    assert repr(LazyTensor(np.ones((3, 1, 2))) * 2) == "LazyTensor(('Mult', [('Var', 0), ('IntCst', 2)]), dim=2)"


def test_genred_source_is_the_built_kernel():
    g = keops_rs.Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"], axis=1)
    assert g.kernel.source == g.source
    assert "Sum_Reduction(Exp(-SqDist(x,y))*b, 0)" in g.source


def test_a_built_kernel_in_jax(rng):
    jax = pytest.importorskip("jax")
    import keops_rs.jax as kj

    jax.config.update("jax_enable_x64", True)
    k = build_kernel("gauss", GAUSS_ARGS, "Sum", 0, GAUSS_TREE)
    f = kj.Kernel(k)
    assert f.signature == k.signature
    x, y, b, s = gauss_data(rng)
    np.testing.assert_allclose(jax.jit(f)(x, y, b, s), k(x, y, b, s), rtol=1e-12)
    dx = jax.grad(lambda x: f(x, y, b, s).sum())(x)
    np.testing.assert_allclose(dx, k.vjp("x", np.ones((x.shape[0], 1)), x, y, b, s), rtol=1e-12)


def test_a_comment_in_a_text_formula_keeps_the_source_valid(rng):
    g = keops_rs.Genred("SqDist(x,y) # the squared distance", ["x = Vi(3)", "y = Vj(3)"], axis=1)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(keops_rs.Kernel(g.source)(x, y), g(x, y), rtol=0)
