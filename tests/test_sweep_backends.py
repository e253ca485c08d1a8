"""The Ray and SLURM (submitit) backends: same results as local, lost workers, missing extras, CLI errors.

The stages are the fakes of ``test_sweep`` (they write the real run-directory contract in
milliseconds), so these tests are about the executors: a local Ray of 2 CPUs started here, and
submitit's local executor (jobs as processes on this machine, no SLURM needed). The real stages
on every backend are ``test_sweep_smoke``'s.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from fasttarget.results import ResultsIndex
from fasttarget.sweep import BackendConfig, Resources, SlurmSettings, Stages, SweepConfig, plan_sweep, run_sweep
from fasttarget.sweep.executors import SlurmExecutor, Task

from test_sweep import FAKES, INLINE, fake_cache, fake_data, fake_ladder, fake_train

TESTS = Path(__file__).resolve().parent
SMALL = {
    "name": "backends", "data": {"source": "fake"}, "student": {"eval_every": 5, "seeds": [0, 1]},
    "report": {"diagnostics": False},  # the fakes write no student model (see test_diagnostics)
    "grid": [{"name": "g", "strategies": ["A", "B", "C"], "teacher_accuracies": [0.3], "teacher_augs": ["stdaug"],
              "student_augs": ["stdaug"], "ipc": [10], "steps": [20]}],
}


def need(module: str):
    """Import an optional backend; skip without it, except under CI=true, where it must be installed."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return importlib.import_module(module)  # scripts/setup.sh installs the extras: fail loudly
    return pytest.importorskip(module)


def results(out: Path) -> dict[str, tuple]:
    """Every run of an index: status, final accuracies and the evaluation curve."""
    index = ResultsIndex(out / "results.sqlite")
    try:
        return {r.run_id: (r.status, r.final_acc, r.final_acc_g, [(e.step, e.test_acc_h) for e in index.evals(r.run_id)])
                for r in index.runs()}
    finally:
        index.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple]:
    out = tmp_path_factory.mktemp("local")
    assert run_sweep(SweepConfig.from_dict(SMALL), out, INLINE, stages=FAKES).counts == {"done": 6}
    return results(out)


@pytest.fixture(scope="module")
def local_ray():
    ray = need("ray")
    # Workers import the fakes from this folder; the test's own Ray, so the sweep leaves it running.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


def test_ray_agrees_with_local(local_ray, reference, tmp_path):
    summary = run_sweep(SweepConfig.from_dict(SMALL), tmp_path, BackendConfig(kind="ray"), stages=FAKES)
    assert summary.counts == {"done": 6}
    assert results(tmp_path) == reference
    assert local_ray.is_initialized()  # joined the caller's Ray, left it to the caller


def test_ray_runs_fleet_units(local_ray, reference, tmp_path):
    summary = run_sweep(SweepConfig.from_dict(SMALL), tmp_path, BackendConfig(kind="ray"), stages=FAKES, max_fleet=4)
    assert summary.counts == {"done": 6} and len(list((tmp_path / "fleets").iterdir())) == 2
    assert results(tmp_path) == reference


def test_ray_worker_killed_mid_run_then_rerun(local_ray, reference, tmp_path):
    cfg = SweepConfig.from_dict(SMALL)
    victim = plan_sweep(cfg).runs[1].run_id
    dying = Stages(prepare_data=fake_data, train_ladder=fake_ladder, build_cache=fake_cache,
                   train_student=functools.partial(fake_train, kill_at=(victim, 10)))
    first = run_sweep(cfg, tmp_path, BackendConfig(kind="ray"), retries=0, stages=dying)
    assert first.counts == {"done": 5, "failed": 1}
    assert first.failed[victim].startswith("worker died: ")
    assert results(tmp_path)[victim][3] == [(5, reference[victim][3][0][1]), (10, reference[victim][3][1][1])]
    again = run_sweep(cfg, tmp_path, BackendConfig(kind="ray"), stages=FAKES)
    assert again.counts == {"done": 6} and again.trained == (victim,)
    assert results(tmp_path) == reference


@pytest.mark.slow  # ~50 s; submitit's local executor also runs fleet units in test_sweep_fleets.py
def test_slurm_through_submitits_local_executor_agrees_with_local(reference, tmp_path, monkeypatch):
    need("submitit")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    # Every job is a fresh Python process (~5 s of imports on 2 busy cores): four units, in three waves.
    small = {**SMALL, "student": {"eval_every": 5, "seeds": [0]}}
    small["grid"] = [{**SMALL["grid"][0], "strategies": ["A", "B"]}]
    backend = BackendConfig(kind="slurm", workers=2, slurm=SlurmSettings(cluster="local", time="0:10:00"))
    summary = run_sweep(SweepConfig.from_dict(small), tmp_path, backend, stages=FAKES)
    assert summary.counts == {"done": 2}
    assert results(tmp_path) == {k: v for k, v in reference.items() if k in summary.trained}
    # submitit's files (pickled jobs, each job's log) stay under the sweep root.
    assert list((tmp_path / "slurm").glob("*/*_log.out"))
    # The same two runs as one fleet job.
    fleet = run_sweep(SweepConfig.from_dict(small), tmp_path / "fleet", backend, stages=FAKES, max_fleet=2)
    assert fleet.counts == {"done": 2} and len(list((tmp_path / "fleet" / "fleets").iterdir())) == 1
    assert results(tmp_path / "fleet") == results(tmp_path)


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('name = "tiny"\n[data]\ndir = "d"\n[[grid]]\nstrategies = ["A"]\nstudent_augs = ["stdaug"]\n'
                   'steps = [10]\neval_every = 5\nseeds = [0]\n')
    return cfg


@pytest.mark.parametrize("what, args, expect", [
    ("unknown backend", ["--backend", "dask"], "--backend must be one of local, ray, slurm"),
    ("--ray-address without --backend ray", ["--ray-address", "auto"], "--ray-address needs --backend ray"),
    ("--workers with --backend ray", ["--backend", "ray", "--workers", "2"], "--workers is for --backend local or slurm"),
    ("SLURM options without --backend slurm", ["--slurm-partition", "gpu"], "the --slurm-* options need --backend slurm"),
    ("bad --slurm-time", ["--backend", "slurm", "--slurm-time", "2h"], "--slurm-time '2h': give minutes"),
    ("unknown --slurm-cluster", ["--backend", "slurm", "--slurm-cluster", "pbs"], "--slurm-cluster must be one of"),
    ("negative --retries", ["--retries", "-1"], "--retries must be ≥ 0"),
    ("zero --workers", ["--workers", "0"], "--workers must be ≥ 1"),
])
def test_cli_refuses_bad_backend_options(user_error, tiny_config, tmp_path, what, args, expect):
    user_error(what, "sweep", tiny_config, "--out", tmp_path / "o", *args, expect=(expect,))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("backend, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_missing_extra_names_the_pip_command(user_error, tiny_config, tmp_path, monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    user_error(f"--backend {backend} without the {extra} extra", "sweep", tiny_config, "--out", tmp_path / "o",
               "--backend", backend, expect=(f"pip install 'fasttarget[{extra}]'",))


def test_slurm_without_sbatch_points_at_the_local_executor(user_error, tiny_config, tmp_path, monkeypatch):
    need("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    user_error("--backend slurm where SLURM is not installed", "sweep", tiny_config, "--out", tmp_path / "o",
               "--backend", "slurm", expect=("sbatch not found", "--slurm-cluster local"))


@pytest.mark.parametrize("what, table, expect", [
    ("unknown unit kind in [resources]", "[resources.trainer]\nnum_cpus = 1\n", "unknown unit kind(s) trainer"),
    ("GPUs on a CPU sweep", "[resources.run]\nnum_gpus = 0.5\n", "num_gpus must be 0 when device"),
    ("non-numeric resources", '[resources.run]\nnum_cpus = "two"\n', "num_cpus and num_gpus are numbers"),
    ("zero CPUs", "[resources.run]\nnum_cpus = 0\n", "num_cpus must be > 0"),
])
def test_cli_refuses_bad_resources(user_error, tiny_config, tmp_path, what, table, expect):
    tiny_config.write_text(tiny_config.read_text() + table)
    user_error(what, "sweep", tiny_config, "--out", tmp_path / "o", expect=(expect,))


class FakeSubmitit:
    """Stands in for submitit's AutoExecutor: records parameters and batches instead of calling sbatch."""

    def __init__(self):
        self.params, self.batches, self._current = {}, [], None

    def update_parameters(self, **params):
        self.params = params

    @contextlib.contextmanager
    def batch(self):
        self._current = []
        yield
        self.batches.append((self.params, self._current))
        self._current = None

    def submit(self, fn, *args):
        self._current.append(args[1])
        return object()


def test_slurm_submits_equal_resources_as_one_array_with_the_cluster_options(tmp_path, monkeypatch):
    need("submitit")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    settings = SlurmSettings(partition="gpu", account="proj", time="1:30:00")
    executor = SlurmExecutor(settings, tmp_path / "slurm")
    executor._executor = fake = FakeSubmitit()
    gpu, cpu = Resources(num_cpus=2, num_gpus=0.5), Resources(num_cpus=1)
    executor.submit([Task(f"run:{i}", print, f"req{i}", gpu) for i in range(3)] + [Task("data:convert", print, "d", cpu)])
    assert [(p, reqs) for p, reqs in fake.batches] == [
        (dict(timeout_min=90, cpus_per_task=2, tasks_per_node=1, nodes=1, slurm_gpus_per_task=1,
              slurm_partition="gpu", slurm_account="proj"), ["req0", "req1", "req2"]),
        (dict(timeout_min=90, cpus_per_task=1, tasks_per_node=1, nodes=1, slurm_partition="gpu",
              slurm_account="proj"), ["d"]),
    ]
    executor._jobs.clear()
