import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
GAUSS = (REPO / "examples" / "kf" / "gauss.kf").read_text()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test process compiles into its own cache directory."""
    os.environ["KEOPS_RS_CACHE_DIR"] = str(tmp_path_factory.mktemp("keops-rs-cache"))
    yield


def sqdist(x, y):
    """Dense (N, M) squared distances in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def gauss_data(rng, n=37, m=23, dtype=np.float64):
    x = rng.standard_normal((n, 3)).astype(dtype)
    y = rng.standard_normal((m, 3)).astype(dtype)
    b = rng.standard_normal((m, 1)).astype(dtype)
    s = np.array([0.8], dtype=dtype)
    return x, y, b, s


def gauss_dense(x, y, b, s):
    s = float(np.asarray(s, dtype=np.float64).reshape(-1)[0])
    return np.exp(-sqdist(x, y) / (2 * s * s)) @ np.asarray(b, dtype=np.float64)
