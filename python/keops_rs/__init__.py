"""keops_rs: KeOps-style symbolic tensors compiled by keops-rs.

- ``Kernel(source, name=None)``: a kernel of ``.kf`` text, called on numpy arrays.
- ``build_kernel(name, args, reduction, axis, formula, k=None, weight=None)``: the same, from a
  formula tree (what ``LazyTensor`` and ``Genred`` use).
- ``Genred`` and ``LazyTensor``: the ``pykeops.numpy`` interface (the subset in README.md).
- ``keops_rs.cluster``: block-sparse ``ranges`` from clusters (``grid_cluster``,
  ``cluster_ranges_centroids``, ``sort_clusters``, ``from_matrix``), for ``Genred(...)(...,
  ranges=...)`` and ``Kernel.call_ranges``.
- ``keops_rs.jax`` (imported on its own, needs jax): ``Kernel`` and ``Genred`` on jax arrays.
- ``KfError``: raised for source that does not compile; its message is the diagnostic.
"""

from ._keops_rs import Kernel, KfError, build_kernel, __version__
from .genred import Genred
from .lazy import LazyTensor, Vi, Vj, Pm
from . import cluster

__all__ = ["Kernel", "KfError", "build_kernel", "Genred", "LazyTensor", "Vi", "Vj", "Pm", "cluster", "__version__"]
