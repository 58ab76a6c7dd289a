"""A volume run's tasks as data: built once per run (:func:`task_graph`); the executors of
:mod:`brainrt.volumes.executors` only schedule it, what each task does is :mod:`.blocks`' and
:mod:`.context`'s.

Per slice z: a read task (``p{z}``, a data task: the slice's plan, read once, for its blocks);
a block task per row band (``b{z}-{r0}``); with a context head, a context task
(``c{z}``) after the blocks of every slice its pooling reaches; ``finish`` (``f{z}``: classify,
after the slice's bands or its context task); ``zsmooth`` (``g{z}``, after the finishes within
the z kernel's reach).
"""

from __future__ import annotations

from typing import NamedTuple

from ..maps.pooling import radius
from .blocks import block_name, read_slice, run_block
from .finish import finish_slice, zsmooth_slice
from .context import context_slice, reach


class Task(NamedTuple):
    """``fn(vplan, store, *args, *values of uses)``; ``name``: its completion record (and Dask key); ``uses``:
    the data tasks whose values it takes; ``deps``: others it waits for; ``block``: a (z, band) block. A
    ``data`` task (a slice's plan) writes no record; its value is dropped once its users have run."""

    name: str
    fn: object
    args: tuple
    deps: tuple = ()
    block: bool = False
    uses: tuple = ()
    data: bool = False


def task_graph(vplan) -> tuple:
    """Every task of ``vplan``, each after the tasks it needs (a topological order: the serial one)."""
    tasks, ctx = [], context_tasks(vplan)  # a context head: all blocks, then one context pass per slice
    for z in vplan.zs:
        bands = [Task(block_name(z, band), run_block, (z, band), (), True, (f"p{z}",)) for band in vplan.bands]
        tasks += [Task(f"p{z}", read_slice, (z,), data=True)] + bands
        if vplan.task == "classify" and not ctx:
            tasks.append(Task(f"f{z}", finish_slice, (z,), tuple(t.name for t in bands)))
    for c in ctx:
        tasks += [c, Task(f"f{c.args[0]}", finish_slice, c.args, (c.name,))]
    if vplan.z_sigma > 0:
        r = radius(vplan.z_sigma)
        for i, z in enumerate(vplan.zs):
            near = vplan.zs[max(0, i - r) : i + r + 1]  # the finished slices its kernel reaches
            tasks.append(Task(f"g{z}", zsmooth_slice, (z,), tuple(f"f{n}" for n in near)))
    return tuple(tasks)


def context_tasks(vplan):
    """The context tasks of a classify run with a context head (none otherwise), each after its blocks."""
    if vplan.task != "classify" or not vplan.context:
        return []
    r, out = reach(vplan), []
    for i, z in enumerate(vplan.zs):
        near = vplan.zs[max(0, i - r) : i + r + 1]
        out.append(Task(f"c{z}", context_slice, (z,), tuple(block_name(n, b) for n in near for b in vplan.bands)))
    return out
