"""``configs/smoke.toml`` for real on every backend; lost workers and a killed driver change nothing.

Each test trains real students (and, for the agreement test, the real ladder and cache) on the
CIFAR-10 sample, so they are ``slow`` (minutes on 2 cores): ``pytest -m slow tests/test_sweep_smoke.py``.
Results are compared run for run: status, final accuracies and every evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fasttarget.sweep import BackendConfig, SlurmSettings, Stages, SweepConfig, plan_sweep, run_sweep

from test_sweep_backends import need, results

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SMOKE = REPO / "configs" / "smoke.toml"


def smoke_cfg() -> SweepConfig:
    cfg = SweepConfig.from_toml(SMOKE)
    return dataclasses.replace(cfg, data_source=REPO / cfg.data_source)


def _worker_path(monkeypatch) -> str:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)  # submitit's job processes and the driver subprocess
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke-local")
    start = time.monotonic()
    summary = run_sweep(smoke_cfg(), out, BackendConfig(workers=2))
    print(f"smoke.toml, local, 2 workers: {time.monotonic() - start:.0f} s")
    assert summary.counts == {"done": 4}, summary.failed
    return out, results(out)


def test_smoke_ray_and_slurm_agree_with_local(reference, tmp_path, monkeypatch):
    ray = need("ray")
    need("submitit")
    path = _worker_path(monkeypatch)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        assert run_sweep(smoke_cfg(), tmp_path / "ray", BackendConfig(kind="ray")).counts == {"done": 4}
    finally:
        ray.shutdown()
    slurm = BackendConfig(kind="slurm", workers=2, slurm=SlurmSettings(cluster="local", time="30"))
    assert run_sweep(smoke_cfg(), tmp_path / "slurm", slurm).counts == {"done": 4}
    assert results(tmp_path / "ray") == reference[1]
    assert results(tmp_path / "slurm") == reference[1]


def _with_shared_teacher(reference: Path, out: Path) -> None:
    """Start a sweep from the reference's data, ladder and cache: these tests are about the runs."""
    for part in ("data", "teachers", "caches"):
        shutil.copytree(reference / part, out / part)


def train_and_tell_pid(req) -> None:
    """The real student run, leaving its worker's pid where the test can find it."""
    (req.run_dir.parent / f"{req.spec.run_id}.pid").parent.mkdir(parents=True, exist_ok=True)
    (req.run_dir.parent / f"{req.spec.run_id}.pid").write_text(str(os.getpid()))
    Stages().train_student(req)


def _kill_when_checkpointed(run_dir: Path, pid_of, timeout_s: float = 900) -> threading.Thread:
    """Kill ``pid_of()`` with SIGKILL once ``run_dir`` has a checkpoint and no final.json yet."""

    def watch() -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "final.json").exists():
                os.kill(pid_of(), signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_ray_worker_killed_mid_student_run_then_rerun(reference, tmp_path, monkeypatch):
    ray = need("ray")
    ref_dir, ref = reference
    _with_shared_teacher(ref_dir, tmp_path)
    victim = plan_sweep(smoke_cfg()).runs[1].run_id  # the B run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": _worker_path(monkeypatch)}})
    try:
        pid_file = tmp_path / "runs" / f"{victim}.pid"
        watcher = _kill_when_checkpointed(tmp_path / "runs" / victim, lambda: int(pid_file.read_text()))
        stages = Stages(train_student=train_and_tell_pid)
        first = run_sweep(smoke_cfg(), tmp_path, BackendConfig(kind="ray"), retries=0, stages=stages)
        watcher.join(1)
        assert first.failed.get(victim, "").startswith("worker died: "), first
        assert first.counts == {"done": 3, "failed": 1}
        again = run_sweep(smoke_cfg(), tmp_path, BackendConfig(kind="ray"))
    finally:
        ray.shutdown()
    assert again.trained == (victim,)
    assert results(tmp_path) == ref


def test_driver_killed_mid_sweep_then_rerun(reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    _with_shared_teacher(ref_dir, tmp_path)
    config = tmp_path / "smoke.toml"
    config.write_text(SMOKE.read_text().replace('source = "../data/', f'source = "{REPO}/data/'))
    argv = [sys.executable, "-m", "fasttarget.cli", "sweep", str(config), "--out", str(tmp_path), "--workers", "2"]
    _worker_path(monkeypatch)
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = [s.run_id for s in plan_sweep(smoke_cfg()).runs]
    # Two workers: the last run starts once two others have finished; kill the driver half-way through it.
    watcher = _kill_when_checkpointed(tmp_path / "runs" / runs[-1], lambda: driver.pid)
    driver.wait(timeout=900)
    watcher.join(1)
    assert driver.returncode == -signal.SIGKILL, driver.stdout.read()
    done_before = [r for r in runs if (tmp_path / "runs" / r / "final.json").is_file()]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(done_before) >= 2, again.stdout  # finished before the kill: kept, not retrained
    assert not any(f"done   {r}" in again.stdout for r in done_before), again.stdout
    assert results(tmp_path) == ref
