"""Where units of work run: local processes, a Ray cluster or SLURM (through submitit).

Every backend implements :class:`Executor`: ``submit`` hands it :class:`Task` s (a unit's
job, its request and its declared :class:`~fasttarget.sweep.config.Resources`), ``wait``
blocks until some finish and returns their :class:`Outcome` s. The sweep driver
(:mod:`fasttarget.sweep.run`) decides *what* runs and when; an executor only runs it.
Every task runs through :func:`run_task` in its worker, which caps torch's and numba's
threads at the unit's ``num_cpus`` — without it a Ray or SLURM worker starts one thread per
core of the node and several units oversubscribe the same cores (5-7x slower on 2 cores).

Ray and submitit are optional extras (``pip install 'fasttarget[ray]'`` / ``'fasttarget[slurm]'``),
imported only when their backend is chosen.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import math
import os
import re
import shutil
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from fasttarget.choices import SWEEP_BACKENDS
from fasttarget.errors import UserError
from fasttarget.sweep.config import Resources

BACKENDS = SWEEP_BACKENDS
SLURM_CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class Task:
    """One unit handed to an executor: ``job(request)`` with ``resources``; ``key`` names it."""

    key: str
    job: Callable[[Any], Any]
    request: Any
    resources: Resources


@dataclass(frozen=True)
class Outcome:
    """How a task ended: ``ok`` with the job's ``result``, or ``error`` (``Type: message``,
    then the traceback) when the job raised or its worker died."""

    key: str
    ok: bool
    result: Any = None
    error: str | None = None


@contextlib.contextmanager
def unit_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch and numba threads, restoring the caller's counts after."""
    import numba
    import torch

    from fasttarget.threads import prefer_openmp

    prefer_openmp()
    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def run_task(job: Callable[[Any], Any], request: Any, threads: int) -> tuple[bool, Any]:
    """A worker's entry point: ``job(request)`` under :func:`unit_threads`.

    Returns ``(True, result)``, or ``(False, "Type: message\\n<traceback>")`` when it raised:
    a failed unit is an outcome for the driver to record, never a crash of the worker.
    """
    try:
        with unit_threads(threads):
            return True, job(request)
    except Exception as err:  # a failed unit must not stop the others
        return False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"


def _outcome(key: str, returned: tuple[bool, Any]) -> Outcome:
    ok, value = returned
    return Outcome(key, True, result=value) if ok else Outcome(key, False, error=value)


def _died(key: str, err: BaseException) -> Outcome:
    return Outcome(key, False, error=f"worker died: {type(err).__name__}: {err}")


class Executor(ABC):
    """Runs tasks somewhere; one instance per sweep invocation (use it as a context manager).

    Attributes:
        slots: how many tasks it runs at once (``None``: as many as it is given; the
            cluster's scheduler queues them by their resources).
    """

    slots: int | None = None

    @abstractmethod
    def submit(self, tasks: Sequence[Task]) -> None:
        """Start ``tasks`` (tasks submitted together may share one job array)."""

    @abstractmethod
    def wait(self) -> list[Outcome]:
        """Block until at least one submitted task ended; return every task that has."""

    def close(self) -> None:
        """Release the workers (called once, also after an error)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InlineExecutor(Executor):
    """One task at a time in the driver's own process (``--workers 1``): no pickling, easy to debug."""

    slots = 1

    def __init__(self) -> None:
        self._queue: list[Task] = []

    def submit(self, tasks: Sequence[Task]) -> None:
        self._queue.extend(tasks)

    def wait(self) -> list[Outcome]:
        task = self._queue.pop(0)
        return [_outcome(task.key, run_task(task.job, task.request, task.resources.threads))]


class ProcessExecutor(Executor):
    """``workers`` spawned processes on this machine; each pins one visible GPU when there are some.

    A worker that dies (killed, out of memory) breaks the pool: every task in it is reported
    dead and a fresh pool takes the next ones.
    """

    def __init__(self, workers: int, gpus: int) -> None:
        import multiprocessing

        self.slots = workers
        self._ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        self._gpus = gpus
        self._pool: cf.ProcessPoolExecutor | None = None
        self._futures: dict[cf.Future, tuple[str, cf.ProcessPoolExecutor]] = {}

    def _fresh_pool(self) -> cf.ProcessPoolExecutor:
        devices = self._ctx.Queue()
        for i in range(self.slots):
            devices.put(i % self._gpus if self._gpus else None)
        return cf.ProcessPoolExecutor(self.slots, mp_context=self._ctx, initializer=_init_process_worker,
                                      initargs=(devices,))

    def submit(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            try:
                pool = self._pool = self._pool or self._fresh_pool()
                future = pool.submit(run_task, t.job, t.request, t.resources.threads)
            except cf.BrokenExecutor:
                # A worker died and another unit finished first: wait() has not seen the death yet,
                # but the pool refuses work already. The dead pool's futures still resolve (with the
                # error) through wait(); new work goes to a fresh pool.
                pool = self._pool = self._fresh_pool()
                future = pool.submit(run_task, t.job, t.request, t.resources.threads)
            self._futures[future] = (t.key, pool)

    def wait(self) -> list[Outcome]:
        done, _ = cf.wait(self._futures, return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for fut in done:
            key, pool = self._futures.pop(fut)
            try:
                outcomes.append(_outcome(key, fut.result()))
            except Exception as err:  # the worker process itself died
                outcomes.append(_died(key, err))
                if pool is self._pool:  # broken: the next submit starts a new one
                    self._pool = None
        return outcomes

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _init_process_worker(devices: Any) -> None:
    """Pool worker start-up: die with the driver (no orphan keeps writing a run), pin one GPU."""
    _die_with_parent()
    device = devices.get()
    if device is not None:
        import torch

        torch.cuda.set_device(device)


def _die_with_parent() -> None:
    # Linux's PR_SET_PDEATHSIG: a killed driver's rerun must not race an orphan on one run directory.
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans finish their unit and exit
        pass


def _require(module: str, extra: str, backend: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--backend {backend} needs {module}: pip install 'fasttarget[{extra}]'") from None


class RayExecutor(Executor):
    """Each unit a Ray task with its declared ``num_cpus`` / ``num_gpus`` (fractions allowed).

    Connects to ``address``; without one to a running cluster (``auto``) if there is one,
    else starts a local Ray for the sweep. A Ray already initialised by the caller (a test,
    a notebook) is used as it is. Ray's own task retries are off: ``--retries`` governs
    every retry, and a retried run resumes from its checkpoint.
    """

    def __init__(self, address: str | None) -> None:
        self._ray = ray = _require("ray", "ray", "ray")
        self._started = False
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False)
            if address is not None:
                try:
                    ray.init(address=address, **kwargs)
                except ConnectionError:
                    raise UserError(f"--ray-address {address}: no Ray cluster answers there; start one with "
                                    "`ray start --head` or leave --ray-address out for a local Ray") from None
            else:
                try:
                    ray.init(address="auto", **kwargs)
                except ConnectionError:  # no cluster running: a local one, for this sweep only
                    ray.init(**kwargs)
            self._started = True
        self._remote = ray.remote(run_task)
        self._refs: dict[Any, str] = {}

    def submit(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            ref = self._remote.options(num_cpus=t.resources.num_cpus, num_gpus=t.resources.num_gpus,
                                       max_retries=0, name=t.key).remote(t.job, t.request, t.resources.threads)
            self._refs[ref] = t.key

    def wait(self) -> list[Outcome]:
        self._ray.wait(list(self._refs), num_returns=1)  # block for the first, then take all that ended
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        outcomes = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                outcomes.append(_outcome(key, self._ray.get(ref)))
            except self._ray.exceptions.RayError as err:  # worker or node lost
                outcomes.append(_died(key, err))
        return outcomes

    def close(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref, force=True)
        if self._started:
            self._ray.shutdown()


@dataclass(frozen=True)
class SlurmSettings:
    """How units are submitted to SLURM.

    Args:
        partition, account: ``--partition`` / ``--account`` of every job.
        gpus_per_task: GPUs of each job that holds a GPU unit (default: the unit's
            ``num_gpus`` rounded up; SLURM cannot share a GPU by fraction).
        time: wall-clock limit of each job (``MINUTES``, ``H:MM:SS`` or ``D-HH:MM:SS``).
        cluster: ``slurm``, or ``local`` for submitit's local executor (jobs are processes
            on this machine: the way to try a sweep without a cluster).
        max_running: most jobs at once (``None``: no limit, the cluster queues them).
    """

    partition: str | None = None
    account: str | None = None
    gpus_per_task: int | None = None
    time: str = "4:00:00"
    cluster: str = "slurm"
    max_running: int | None = None

    def __post_init__(self) -> None:
        if self.cluster not in SLURM_CLUSTERS:
            raise UserError(f"--slurm-cluster must be one of {', '.join(SLURM_CLUSTERS)}, got {self.cluster!r}")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise UserError(f"--slurm-gpus-per-task must be ≥ 0, got {self.gpus_per_task}")
        slurm_minutes(self.time)  # a bad --slurm-time fails now, not at the first submission

    @property
    def time_min(self) -> int:
        """``time`` in whole minutes (what submitit takes)."""
        return slurm_minutes(self.time)


def slurm_minutes(text: str) -> int:
    """A SLURM time limit in whole minutes, rounded up.

    Example:
        >>> [slurm_minutes(t) for t in ("90", "1:30:00", "2-00:00:00", "0:00:30")]
        [90, 90, 2880, 1]
    """
    found = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d\d)|(\d+)", text.strip())
    if not found:
        raise UserError(f"--slurm-time {text!r}: give minutes (90), H:MM:SS (1:30:00) or D-HH:MM:SS")
    days, hours, minutes, seconds, plain = found.groups()
    if plain is not None:
        return max(1, int(plain))
    if hours is None and days is not None:  # D-HH:MM, SLURM's other spelling
        hours, minutes, seconds = minutes, seconds, "0"
    return max(1, int(days or 0) * 1440 + int(hours or 0) * 60 + int(minutes) + (int(seconds) > 0))


class SlurmExecutor(Executor):
    """Units as SLURM jobs through submitit; tasks submitted together with equal resources go as
    one job array. ``folder`` (under the sweep root) holds submitit's pickles and each job's logs."""

    def __init__(self, settings: SlurmSettings, folder: Path, poll_s: float = 2.0) -> None:
        submitit = _require("submitit", "slurm", "slurm")
        if settings.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--backend slurm: sbatch not found; run the sweep on a SLURM login node, "
                            "or pass --slurm-cluster local to try it with submitit's local executor")
        self._settings = settings
        self._executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=settings.cluster)
        self.slots = settings.max_running
        self._poll_s = poll_s
        self._jobs: dict[Any, str] = {}

    def _parameters(self, res: Resources) -> dict[str, Any]:
        s = self._settings
        gpus = (s.gpus_per_task if s.gpus_per_task is not None else math.ceil(res.num_gpus)) if res.num_gpus else 0
        params: dict[str, Any] = dict(timeout_min=s.time_min, cpus_per_task=res.threads, tasks_per_node=1, nodes=1)
        if s.cluster == "slurm":
            params.update(slurm_gpus_per_task=gpus or None, slurm_partition=s.partition, slurm_account=s.account)
        else:
            params.update(gpus_per_node=gpus)
        return {k: v for k, v in params.items() if v is not None}

    def submit(self, tasks: Sequence[Task]) -> None:
        by_resources: dict[Resources, list[Task]] = {}
        for t in tasks:
            by_resources.setdefault(t.resources, []).append(t)
        for res, group in by_resources.items():
            self._executor.update_parameters(**self._parameters(res))
            with self._executor.batch():  # one array job per group
                jobs = [self._executor.submit(run_task, t.job, t.request, t.resources.threads) for t in group]
            self._jobs.update(zip(jobs, (t.key for t in group)))

    def wait(self) -> list[Outcome]:
        while True:
            ended = [job for job in self._jobs if job.done()]
            if ended:
                break
            time.sleep(self._poll_s)
        outcomes = []
        for job in ended:
            key = self._jobs.pop(job)
            try:
                outcomes.append(_outcome(key, job.result()))
            except Exception as err:  # the job died: timeout, preemption, node failure, killed
                outcomes.append(_died(key, err))
        return outcomes

    def close(self) -> None:
        for job in self._jobs:
            job.cancel(check=False)


@dataclass(frozen=True)
class BackendConfig:
    """Which executor a sweep uses, and its options (validated once, from the CLI's flags).

    Args:
        kind: ``local``, ``ray`` or ``slurm``.
        workers: ``local``: worker processes (1 runs units in the driver's process);
            ``slurm``: most jobs at once. Not used by ``ray`` (it schedules by resources).
        ray_address: the Ray cluster to join (``ray``).
        slurm: :class:`SlurmSettings` (``slurm``).
    """

    kind: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    slurm: SlurmSettings | None = None

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.kind!r}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be ≥ 1, got {self.workers}")
        if self.kind == "ray" and self.workers is not None:
            raise UserError("--workers is for --backend local or slurm: Ray runs as many units as the "
                            "cluster's resources hold (set [resources] in the config)")
        if self.kind != "ray" and self.ray_address is not None:
            raise UserError("--ray-address needs --backend ray")
        if self.kind != "slurm" and self.slurm is not None:
            raise UserError("the --slurm-* options need --backend slurm")


def local_gpu_count(device: str) -> int:
    """GPUs visible to this process for a CUDA sweep (0 on CPU)."""
    if device != "cuda":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_free_memory() -> int | None:
    """Free bytes of the visible GPU with the least free memory, ``None`` without a GPU
    (e.g. a SLURM login node: fleets then take ``--max-fleet`` or its default as given)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))


def default_workers(device: str, resources: Resources) -> int:
    """Local worker processes: one per visible GPU on CUDA, else as many as the cores hold."""
    gpus = local_gpu_count(device)
    return gpus or max(1, (os.cpu_count() or 1) // resources.threads)


def build_executor(backend: BackendConfig, root: Path, device: str, run_resources: Resources) -> Executor:
    """The executor of ``backend`` for a sweep rooted at ``root``."""
    if backend.kind == "ray":
        return RayExecutor(backend.ray_address)
    if backend.kind == "slurm":
        settings = backend.slurm or SlurmSettings()
        if backend.workers is not None or settings.cluster == "local":
            # Submitit's local executor starts every job at once; cap them at what the cores hold.
            limit = backend.workers or default_workers(device, run_resources)
            settings = replace(settings, max_running=limit)
        return SlurmExecutor(settings, Path(root) / "slurm")
    workers = backend.workers or default_workers(device, run_resources)
    return InlineExecutor() if workers == 1 else ProcessExecutor(workers, local_gpu_count(device))
