"""Executors: run a volume plan's task graph (:func:`~brainrt.volumes.graph.task_graph`, built once
as data) in this process or on a Dask cluster. They only schedule: the tasks are
:mod:`brainrt.volumes.blocks`' business, the store's folder, records and resume
:mod:`brainrt.outputs.zarr_stack`'s, its arrays :mod:`brainrt.volumes.layout`'s.

A new executor is one more function of ``(vplan, store, tasks, tick)`` beside
:func:`run_serial` and :func:`run_dask` that runs each task through
:func:`~brainrt.volumes.blocks.execute` after its ``uses`` and ``deps``, passes the values
of a task's ``uses`` (data tasks: a slice's plan) to it and drops each such value after its
last user, and one branch in :func:`run_volume`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter

from ..errors import BrainrtError
from ..outputs.zarr_stack import ZarrStack
from ..runfiles import output_lock
from .blocks import SliceChecks, execute, remember_bundle, worker_bundle
from .graph import task_graph
from .layout import create_store, finish_store
from .plan import make_volume_plan

log = logging.getLogger("brainrt")


def run_volume(vplan, out, *, client=None, bundle=None, progress=False, on_task=None, overwrite=False):
    """Run every task of ``vplan`` into the OME-Zarr (classify) or zarr (featurize) folder ``out``.

    ``client``: a ``dask.distributed.Client`` (None: run in this process with ``bundle``).
    ``out`` finished by the same run: nothing to do (``complete`` in the statistics); anything
    else there is refused unless ``overwrite`` (README, "Finished outputs"). Resumes an
    unfinished run of the same plan; ``on_task(n_done)`` is called after each task (tests use
    it to interrupt a run). Returns statistics (tasks, computed, skipped, seconds, blocks/s).
    """
    with output_lock(out):  # one run at a time into ``out`` (the second is refused in one line)
        return _run_volume(vplan, out, client, bundle, progress, on_task, overwrite)


def _run_volume(vplan, out, client, bundle, progress, on_task, overwrite):
    stack = ZarrStack(out)
    if stack.finished(vplan.record(), overwrite=overwrite):
        return _complete(vplan)
    tmp, already = stack.open(vplan.record(), lambda tmp: create_store(vplan, tmp), overwrite=overwrite)
    t0 = time.perf_counter()
    tasks, counts = task_graph(vplan), [0, 0]  # blocks, slice tasks computed
    bar, checks = _bar(vplan, progress), SliceChecks(vplan, tmp)

    def tick(task, computed):
        counts[0 if task.block else 1] += computed
        if task.block:  # a warning for its slice if that looks unlike the training tissue (once)
            checks.seen(task.args[0])
            if bar is not None:
                bar.update(1)
        if on_task is not None:
            on_task(sum(counts))
        if noted:  # a Ctrl-C that a library swallowed where it landed
            raise KeyboardInterrupt

    try:
        with _ctrl_c_noted() as noted:
            if client is None:
                remember_bundle(vplan, bundle or worker_bundle(vplan))
                run_serial(vplan, tmp, tasks, tick)
            else:
                log.info("dask dashboard: %s", client.dashboard_link)
                run_dask(vplan, tmp, tasks, tick, client)
    except BrainrtError:  # a bad slice (NaN, a cut file): a fixed input is another run, its blocks of no use
        stack.discard()
        raise
    finally:
        if bar is not None:
            bar.close()
    finish_store(vplan, tmp)
    stack.commit(input_check=checks.summary())
    dt = time.perf_counter() - t0
    return {"blocks": vplan.n_blocks, "computed_blocks": counts[0], "skipped_records": already,
            "seconds": round(dt, 3), "blocks_per_s": round(counts[0] / dt, 3) if dt else None, "complete": False,
            "unlike": checks.unlike}


@contextlib.contextmanager
def _ctrl_c_noted():
    """Ctrl-C raises KeyboardInterrupt where it lands, as always, and is also noted in the list this yields. A
    library can swallow the exception (distributed's gc callback runs in this thread, prints it and goes on);
    the run raises it again after its next task, so that a Ctrl-C is never lost. Main thread only. Nested, it
    yields the outer one's list: a local cluster notes from its start, the run checks that list."""
    global _NOTING
    if _NOTING is not None:  # an outer one notes them already (a local cluster's whole life): the same list
        yield _NOTING
        return
    noted = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def handler(signum, frame):
        noted.append(True)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    _NOTING = noted
    try:
        yield noted
    finally:
        _NOTING = None
        signal.signal(signal.SIGINT, old)


#: The list of the active :func:`_ctrl_c_noted` (main thread), None outside one.
_NOTING = None


def _complete(vplan):
    """The statistics of a run that found its output finished (nothing computed)."""
    return {"blocks": vplan.n_blocks, "computed_blocks": 0, "skipped_records": 0, "seconds": 0.0,
            "blocks_per_s": None, "complete": True}


def _bar(vplan, progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=vplan.n_blocks, unit="block", desc=vplan.task, smoothing=0.1, mininterval=1.0)


def _users(tasks):
    """How many tasks use each data task's value (an executor drops the value after the last)."""
    return Counter(u for t in tasks for u in t.uses)


def run_serial(vplan, store, tasks, tick):
    """Each task in the graph's (topological) order, in this process (one slice's plan held at a time)."""
    values, left = {}, _users(tasks)
    for task in tasks:
        out = execute(vplan, store, task, *(values[u] for u in task.uses))
        if task.data:
            values[task.name] = out
            continue
        for u in task.uses:
            left[u] -= 1
            if not left[u]:
                del values[u]
        tick(task, out)


def run_dask(vplan, store, tasks, tick, client):
    """One Dask task per graph task, after the futures of its uses and deps; workers read, compute and
    write themselves. A slice's plan stays on the worker that read it (Dask runs its blocks there, or
    copies it to another worker) and is released after its last block; it never comes to the client."""
    from dask.distributed import as_completed

    run, futures, left = uuid.uuid4().hex[:8], {}, _users(tasks)
    for t in tasks:
        futures[t.name] = client.submit(execute, vplan, str(store), t, *(futures[d] for d in t.uses + t.deps),
                                        key=f"brainrt-{t.name}-{run}", retries=2)
    by_key = {futures[t.name].key: t for t in tasks if not t.data}
    pending = [futures[t.name] for t in tasks if not t.data]
    try:
        for f in as_completed(pending):
            task = by_key[f.key]
            tick(task, f.result())
            for u in task.uses:
                left[u] -= 1
                if not left[u]:
                    futures.pop(u)  # the client's last reference: the plan is freed on the workers
    except BaseException:
        client.cancel(list(futures.values()))
        raise


@contextlib.contextmanager
def dask_client(*, workers=None, scheduler=None):
    """A ``dask.distributed.Client``: of the scheduler at ``scheduler``, else of a local cluster of
    ``workers`` processes (default: one per core) with one thread each."""
    if scheduler:
        from dask.distributed import Client

        _quiet_distributed()
        with Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with _deaf_to_ctrl_c() as interrupted:  # from the import on: a library's bare except must not eat the Ctrl-C
        from dask.distributed import Client, LocalCluster

        _quiet_distributed()
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                               silence_logs=logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL)
        client = Client(cluster)
        from distributed.gc import disable_gc_diagnosis

        disable_gc_diagnosis(force=True)  # the in-process scheduler's gc timing: where a Ctrl-C landed and was eaten
    with _ctrl_c_noted(), cluster, client:  # from the start on: the run raises a Ctrl-C a library swallowed
        try:
            if interrupted:  # while the cluster started: raised now, so that it is shut down as a whole
                raise KeyboardInterrupt
            yield client
        except KeyboardInterrupt:  # the scheduler's complaints about the work a stop cancels ("Couldn't gather
            logging.getLogger("distributed").setLevel(logging.CRITICAL)  # keys") are not the one line's business
            raise


def _quiet_distributed():
    logging.getLogger("distributed").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)  # "still alive, killing" after an interrupt


@contextlib.contextmanager
def _deaf_to_ctrl_c():
    """Start a local cluster whose worker processes a terminal's Ctrl-C does not reach, and that Ctrl-C does
    not cut short (a half-started cluster prints tracebacks at exit): a Ctrl-C meanwhile is noted in the list
    it yields, for the caller to raise once the cluster can be shut down.

    A terminal sends SIGINT to every process of its foreground group, the workers too: each would print
    its KeyboardInterrupt traceback while this process shuts the cluster down. SIGINT is blocked in this
    thread while the cluster starts: its IO loop thread inherits the mask, and so does every worker
    process it starts (restarted ones too; a process keeps its parent thread's mask across exec). The
    multiprocessing resource tracker is started first: starting it unblocks SIGINT in the starting thread.
    """
    caught = []
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield caught
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    old = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield caught
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending SIGINT is noted in ``caught``
        signal.signal(signal.SIGINT, old)


def process_volume(source, bundle, out, *, task="classify", client=None, workers=None, scheduler=None,
                   progress=False, overwrite=False, **options):
    """Plan and run a volume into ``out`` (see :func:`~brainrt.volumes.plan.make_volume_plan` for ``options``).

    ``client``: a ``dask.distributed.Client`` to run on; without one, a local cluster of
    ``workers`` processes or the scheduler at ``scheduler`` is used for the run. A finished
    ``out`` of the same run is left as it is (statistics ``complete``, no cluster started);
    any other output there is refused unless ``overwrite``. Returns ``(plan, statistics)``.
    """
    vplan = make_volume_plan(source, bundle, task=task, **options)
    with output_lock(out):  # a second run into ``out`` is refused before a cluster starts
        if ZarrStack(out).finished(vplan.record(), overwrite=overwrite):
            return vplan, _complete(vplan)
        if client is not None:
            return vplan, run_volume(vplan, out, client=client, progress=progress, overwrite=overwrite)
        with dask_client(workers=workers, scheduler=scheduler) as c:
            return vplan, run_volume(vplan, out, client=c, progress=progress, overwrite=overwrite)
