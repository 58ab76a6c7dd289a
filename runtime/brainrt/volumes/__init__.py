"""Whole volumes: a stack in, one OME-Zarr (classify) or zarr (featurize) out, a (z, row band) block per task.

- the stacks are read by :mod:`brainrt.sources` (one registry of readers: a 3D TIFF, a folder of 2D
  TIFFs, a zarr / OME-Zarr stack, an HDF5 dataset; their reads measured: :func:`brainrt.sources.bytes_read`);
- :mod:`.plan`: the volume's input edge, :func:`make_volume_plan` (same option declarations
  as a slice's, :mod:`brainrt.model.params`) and the frozen :class:`VolumePlan`;
- :mod:`.blocks`: what runs in a task (worker caches, the band task, running a task once);
  :mod:`.finish`: the classify slice tasks (smoothing, the written maps); :mod:`.context`: a
  context head's slice task; :mod:`.layout`: the store's arrays (its folder, records and resume:
  :class:`brainrt.outputs.ZarrStack`);
- :mod:`.graph`: the task graph as data;
- :mod:`.executors`: serial and Dask executors that only schedule that graph, and
  :func:`process_volume`, the one call (plan, cluster, run).

Lives here: the volume's plan, tasks, task graph and executors (the jobs of a stack).
May import: every room below the jobs (sources, model, heads, bundle, engine, outputs: the stack is
written through :class:`brainrt.outputs.ZarrStack`); never the command line, its options or the
napari plugin.
"""

from .blocks import read_slice, run_block, slice_plan, worker_bundle
from .executors import dask_client, process_volume, run_volume
from .graph import task_graph
from .plan import VolumePlan, make_volume_plan, parse_z

__all__ = ["VolumePlan", "dask_client", "make_volume_plan", "parse_z", "process_volume", "read_slice", "run_block",
           "run_volume", "slice_plan", "task_graph", "worker_bundle"]
