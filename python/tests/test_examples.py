"""The scripts of examples/python/, each run as a user runs it (a subprocess, small sizes, a
temporary output folder): exit status 0, the PNG written, and the figure each one is about."""

import pathlib
import re
import subprocess
import sys

import pytest

from conftest import REPO

EXAMPLES = REPO / "examples" / "python"

pytest.importorskip("matplotlib", reason="the examples plot with matplotlib "
                                         "(scripts/python.sh venv installs it)")


def run_example(script, out, *options):
    """Runs examples/python/<script> with --out `out`; returns its standard output."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(out), *options],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def numbers(pattern, text):
    """Every float that `pattern`'s group captures in `text`, in order."""
    return [float(m) for m in re.findall(pattern, text)]


def assert_png(path):
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


# envelope: one backward pass per step; unrolled: jax.grad back through a lax.scan of 30
# iterations, each two custom calls.
@pytest.mark.parametrize("gradient", ["envelope", "unrolled"])
def test_sinkhorn_loss_decreases(tmp_path, gradient):
    pytest.importorskip("jax", reason="sinkhorn.py runs keops_rs.jax, which needs jax "
                                      "(scripts/python.sh venv installs it)")
    out = run_example("sinkhorn.py", tmp_path, "--n", "200", "--steps", "3", "--iterations", "30",
                      "--gradient", gradient)
    assert_png(tmp_path / "sinkhorn.png")
    losses = numbers(r"step +\d+ +loss ([-\d.e+]+)", out)
    assert len(losses) == 4, out
    # Each step moves the cloud along the loss's gradient: strictly lower, and far lower in total
    # (the clouds start well apart).
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0], losses
    # The gradient through keops_rs.jax's backward kernels against JAX's on dense matrices.
    (diff,) = numbers(r"gradient vs dense JAX: max relative difference ([-\d.e+]+)", out)
    assert diff < 1e-9, out


def test_knn_accuracy_on_separated_blobs(tmp_path):
    out = run_example("knn.py", tmp_path, "--n", "800", "--k", "5", "--spread", "0.15",
                      "--grid", "60")
    assert_png(tmp_path / "knn.png")
    # Blobs 0.15 wide with centres at least 1.4 apart barely overlap: K-NN gets almost all.
    (accuracy,) = numbers(r"test accuracy: ([\d.]+)", out)
    assert accuracy > 0.97, out
    (diff,) = numbers(r"K smallest distances vs dense numpy \(\d+ queries\): "
                      r"max difference ([-\d.e+]+)", out)
    assert diff < 1e-12, out


def test_kernel_ridge_fits_and_cg_converges(tmp_path):
    out = run_example("kernel_ridge.py", tmp_path, "--n", "600")
    assert_png(tmp_path / "kernel_ridge.png")
    residuals = numbers(r"CG iteration +\d+ +relative residual ([-\d.e+]+)", out)
    assert len(residuals) >= 2, out
    # CG's residual may rise for a step, but over the run it falls to the tolerance (1e-6).
    assert residuals[-1] < 1e-6 and residuals[-1] < 1e-4 * residuals[0], residuals
    (recomputed,) = numbers(r"residual recomputed from the solution: ([-\d.e+]+)", out)
    assert recomputed < 1e-5, out
    (against_dense,) = numbers(r"alpha vs dense numpy solve: relative difference ([-\d.e+]+)",
                               out)
    assert against_dense < 1e-4, out
    # Noise 0.3 on the samples; the fit is well within it of the noiseless function.
    (rmse,) = numbers(r"test RMSE against the noiseless function: ([\d.]+)", out)
    assert rmse < 0.1, out


def test_diffusion_curvature_sign_pattern(tmp_path):
    out = run_example("diffusion_curvature.py", tmp_path, "--n", "2000")
    assert_png(tmp_path / "diffusion_curvature.png")
    assert_png(tmp_path / "diffusion_map.png")
    assert out.count("Lanczos converged") == 4, out
    # At N = 2000 the script checks itself against dense numpy: the walk P^t rebuilt from every
    # eigenpair through its psi and phi, then its own top-k eigenvalues and laziness.
    (identity,) = numbers(r"P\^t = Psi diag\(lambda\^t\) Phi\^T over all \S+ entries: "
                          r"max relative difference ([-\d.e+]+)", out)
    assert identity < 1e-5, out
    eigenvalues, laziness = numbers(r"(?:eigenvalues|laziness) vs numpy(?:'s top \d+)?: "
                                    r"max difference ([-\d.e+]+)", out)
    assert eigenvalues < 1e-6 and laziness < 1e-5, out
    curvature = {(surface, region): float(value) for surface, region, value in re.findall(
        r"curvature (\w+) ([\w ]+): ([-+\d.e]+) \(", out)}
    assert len(curvature) == 5, out
    # Positive on the sphere and the torus's outer ring, negative at the saddle's centre and on
    # the inner ring, and the plane's centre within half of the sphere's (curvature 1) value.
    assert curvature["sphere", "all"] > 0, out
    assert curvature["torus", "outer ring"] > 0, out
    assert curvature["saddle", "centre"] < 0, out
    assert curvature["torus", "inner ring"] < 0, out
    assert abs(curvature["plane", "centre"]) < 0.5 * curvature["sphere", "all"], out
    assert "sign pattern: ok" in out, out
