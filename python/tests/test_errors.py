"""Bad input raises a Python exception that names the problem, never a crash: every case runs
in a child interpreter, which must exit normally."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import GAUSS, REPO

CHILD_PRELUDE = textwrap.dedent(
    """
    import numpy as np, keops_rs, sys
    from keops_rs import KfError
    GAUSS = open(sys.argv[1]).read()
    k = keops_rs.Kernel(GAUSS)
    x = np.ones((5, 3)); y = np.ones((4, 3)); b = np.ones((4, 1)); s = np.array([1.0])
    def expect(exc_type, fn):
        try:
            fn()
        except exc_type as e:
            print(type(e).__name__ + ": " + str(e).replace(chr(10), " | "))
            return
        except BaseException as e:
            print("WRONG " + type(e).__name__ + ": " + str(e).replace(chr(10), " | "))
            return
        print("NO ERROR")
    """
)


def run_child(body):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(body), str(REPO / "examples/kf/gauss.kf")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"child ended with {proc.returncode}: {proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    for line in lines:
        assert not line.startswith(("WRONG", "NO ERROR")), line
    return lines


def test_bad_source_raises_kferror_with_the_diagnostic():
    (line,) = run_child(
        """
        expect(keops_rs.KfError, lambda: keops_rs.Kernel("kernel k {\\n    x = Vi(3)\\n    Sum_Reduction(Exp(x, x), 0)\\n}\\n"))
        """
    )
    assert line.startswith("KfError: ")
    assert "<source>:3:" in line and "Exp" in line


@pytest.mark.parametrize(
    "call,exc,needle",
    [
        ("k(x, y, b)", "TypeError", "`s`"),
        ("k(x, y, b, s, s)", "TypeError", "4 arguments"),
        ("k(x, y, b, s=s, z=s)", "TypeError", "`z`"),
        ("k(x, y, b, s, x=x)", "TypeError", "`x` is given twice"),
        ("k([[1.0, 2.0, 3.0]], y, b, s)", "TypeError", "`x`"),
        ("k(x.astype(np.int64), y, b, s)", "TypeError", "`x`"),
        ("k(x, y.astype(np.float32), b, s)", "TypeError", "`y`"),
        ("k(x, np.ones((4, 2)), b, s)", "ValueError", "`y`"),
        ("k(x, y, np.ones((3, 1)), s)", "ValueError", "`b`"),
        ("k(x, y, b, np.ones(2))", "ValueError", "`s`"),
        ("k(np.ones((5, 3, 1)), y, b, s)", "ValueError", "`x`"),
        ("keops_rs.Kernel(GAUSS, name='other')", "ValueError", "other"),
        ("keops_rs.Kernel(42)", "TypeError", ""),
        ("k.evaluate(x, y, b, s, backend='cuda')", "ValueError", "backend"),
        ("k.vjp('x', np.ones(5), x, y, b)", "TypeError", "`s`"),
        ("keops_rs.Genred('Exp(-SqDist(x,y))', ['x = Vi(3)', 'y = Vj(3)'], reduction_op='Median')", "ValueError", "reduction_op"),
        ("keops_rs.Genred('x', ['x = Vk(3)'])", "ValueError", "aliases[0]"),
        ("keops_rs.Genred('x', ['x = Vi(3)', 'x = Vj(3)'])", "ValueError", "`x`"),
        ("keops_rs.Genred('x*y', ['x = Vi(0, 3)', 'y = Vj(2, 3)'])", "ValueError", "positions"),
        ("keops_rs.Genred('SqDist(x,y)', ['x = Vi(3)', 'y = Vj(3)'], reduction_op='KMin')", "ValueError", "opt_arg"),
        ("keops_rs.Genred('SqDist(x,y', ['x = Vi(3)', 'y = Vj(3)'])", "KfError", ":"),
        ("keops_rs.Genred('SqDist(x,y)', ['x = Vi(3)', 'y = Vj(3)'], axis=2)", "ValueError", "axis"),
        ("keops_rs.LazyTensor(np.ones((2, 3, 4, 5)))", "ValueError", "batch"),
        ("keops_rs.LazyTensor(np.ones((2, 3)))", "ValueError", "axis"),
        ("keops_rs.LazyTensor(np.ones((2, 1, 3))) + keops_rs.LazyTensor(np.ones((1, 4, 2)))", "ValueError", "dimensions"),
        ("keops_rs.LazyTensor(np.ones((2, 1, 3))).sum(dim=1, ranges=(1,))", "ValueError", "6-tuple"),
    ],
)
def test_bad_calls_raise_named_errors(call, exc, needle):
    (line,) = run_child(f"expect({exc}, lambda: {call})\n")
    assert line.startswith(exc + ":"), line
    assert needle in line, line


def test_deep_formulas_do_not_crash():
    # 20000 nested calls: the front end, the diagnostic and dropping the syntax tree all recurse
    # that deep; an unknown operator at the bottom keeps the test to the front end.
    lines = run_child(
        """
        deep = "Foo(x)"
        for _ in range(20000):
            deep = "Exp(" + deep + ")"
        src = "kernel deep {\\n    x = Vi(1)\\n    Sum_Reduction(" + deep + ", 0)\\n}\\n"
        expect(keops_rs.KfError, lambda: keops_rs.Kernel(src))
        expect(keops_rs.KfError, lambda: keops_rs.Genred(deep, ["x = Vi(1)"], axis=1))
        """
    )
    assert len(lines) == 2
    assert all(line.startswith("KfError: ") and "Foo" in line for line in lines)


def test_a_new_process_finds_the_kernel_in_the_disk_cache(tmp_path):
    env = dict(os.environ, KEOPS_RS_CACHE_DIR=str(tmp_path))
    script = "import keops_rs, sys; keops_rs.Kernel(open(sys.argv[1]).read()); print('ok')"
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", script, str(REPO / "examples/kf/gauss.kf")],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "ok"
        entries = [p for p in tmp_path.iterdir() if p.name.endswith(".kmod")]
        assert len(entries) == 1


def test_large_gaussian_sum_in_bounded_memory():
    # N = M = 2e5: the kernel matrix would take 160 GB in float32; the reduction must run in
    # memory proportional to N + M (the peak resident size of the child stays under 1 GiB).
    (line,) = run_child(
        """
        import resource
        n = 200_000
        rng = np.random.default_rng(1)
        x = rng.standard_normal((n, 3)).astype(np.float32)
        y = rng.standard_normal((n, 3)).astype(np.float32)
        b = rng.standard_normal((n, 1)).astype(np.float32)
        out = k(x, y, b, np.array([0.05], dtype=np.float32))
        # a few rows against a dense float64 computation of those rows
        rows = x[:5].astype(np.float64)
        d = ((rows[:, None, :] - y[None].astype(np.float64)) ** 2).sum(-1)
        ref = np.exp(-d / (2 * 0.05 ** 2)) @ b.astype(np.float64)
        assert out.shape == (n, 1) and out.dtype == np.float32
        assert np.allclose(out[:5], ref, rtol=1e-3, atol=1e-3), (out[:5], ref)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    peak_kib = int(line)
    assert peak_kib < 1024 * 1024, f"peak resident size {peak_kib} KiB"
