"""Where `sepsisrl run`'s units run: the local worker pool and Ray. A worker lost mid-unit is
retried, a unit that raised is reported once with its name, and the executor changes neither
the results (same bytes) nor the cache (a unit finished by one is reused by the other)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import pytest

from sepsisrl.config import ConfigError
from sepsisrl.study.config import load_study_config
from sepsisrl.study.executors import LocalPool, RayExecutor, make_executor, unit_resources
from sepsisrl.study.runner import StudyError
from sepsisrl.study.worker import EXIT_ONCE
from tests.test_study import TINY

#: a unit with nothing to do: quick, and enough to show where it ran
EMPTY = {"label": "empty", "threads": 1}
#: a unit whose code raises (torch refuses 0 threads)
RAISES = {"label": "bad unit", "threads": 0}


# ------------------------------------------------------------------- the local pool
def test_a_local_worker_lost_mid_unit_is_replaced_and_the_unit_retried(tmp_path, monkeypatch):
    marker = tmp_path / "exited"
    monkeypatch.setenv(EXIT_ONCE, str(marker))  # the first unit kills its worker process
    pool = LocalPool(1, tmp_path / "workers.log")
    try:
        first = pool.procs[0]
        res = pool.submit(EMPTY).result(timeout=120)
        assert res["label"] == "empty" and res["trained"] is None
        assert marker.is_file() and first.poll() == 17  # it really died ...
        assert pool.procs[0] is not first and pool.procs[0].poll() is None  # ... and was replaced
        assert pool.submit({**EMPTY, "label": "next"}).result(timeout=60)["label"] == "next"
    finally:
        pool.close()
    log = (tmp_path / "workers.log").read_text()
    assert "exited (status 17) during unit empty; running it again on a fresh worker" in log


def test_a_busy_worker_exits_when_its_driver_dies_without_stopping_it(tmp_path):
    """A driver killed outright (SIGKILL, a crash) cannot stop its workers. An idle worker sees
    its stdin close; a busy one (here: sleeping as a long unit would train) notices that it was
    re-parented and exits, instead of training on in the background."""
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "worker.pid"
    busy = ("from sepsisrl.study.worker import exit_with_parent; exit_with_parent(0.2); "
            "import time; time.sleep(600)")  # fmt: skip
    driver = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-c', {busy!r}])\n"
        f"open({str(pid_file)!r}, 'w').write(str(w.pid))\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the driver did not start its worker"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        time.sleep(3.0)  # let the worker import and start its watch
        assert _proc_state(worker) not in ("Z", None)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _proc_state(worker) not in ("Z", None):  # exited (or reaped by init)
            assert time.monotonic() < deadline, "the orphaned worker is still running"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_worker_watches_its_driver_from_the_start(monkeypatch):
    import io

    from sepsisrl.study import worker

    started = []
    monkeypatch.setattr(worker, "exit_with_parent", lambda: started.append(True))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no job: the worker ends at once
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() redirects it; restored after
    worker.main()
    assert started == [True]


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_a_local_unit_that_raises_is_reported_once_with_its_name(tmp_path):
    pool = LocalPool(1, tmp_path / "workers.log")
    try:
        worker = pool.procs[0]
        with pytest.raises(StudyError, match=r"unit bad unit failed: RuntimeError: .*positive"):
            pool.submit(RAISES).result(timeout=120)
        assert pool.procs == [worker] and worker.poll() is None  # no retry, no new worker
    finally:
        pool.close()
    log = (tmp_path / "workers.log").read_text()
    assert log.count("Traceback") == 1 and "running it again" not in log


def test_the_runner_keeps_the_pools_former_name():
    from sepsisrl.study.runner import WorkerPool

    assert WorkerPool is LocalPool


def test_an_unknown_or_missing_executor_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    needs = r"--executor ray needs Ray: pip install 'sepsisrl\[ray\]'"
    with pytest.raises(StudyError, match=needs):
        make_executor("ray", 2, tmp_path / "workers.log", None)
    with pytest.raises(StudyError, match="unknown executor 'dask'"):
        make_executor("dask", 2, tmp_path / "workers.log", None)
    from sepsisrl.study.runner import run_study

    ray_cfg = load_study_config("quick", overrides={**TINY, "executor": "ray"})
    with pytest.raises(StudyError, match=needs):  # before any work: no world simulated
        run_study(tmp_path / "ws", ray_cfg)
    assert not (tmp_path / "ws" / "raw").exists()
    from sepsisrl.config import ConfigError

    with pytest.raises(ConfigError, match="executor: Input should be 'local' or 'ray'"):
        load_study_config("quick", overrides={"executor": "dask"})
    assert load_study_config("quick").executor == "local"


def test_a_study_that_compiles_without_a_cpp_compiler_stops_before_any_work(tmp_path, monkeypatch):
    import sepsisrl.study.runner as runner
    from sepsisrl.threads import cpp_compiler

    card = load_study_config("card")
    assert card.train["compile"] is True  # the card profile compiles IQL's step
    assert "compile" not in load_study_config("quick").train  # the quick one does not
    assert cpp_compiler() is not None  # this machine (CI) has one
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert cpp_compiler() is None
    cfg = load_study_config("quick", overrides={**TINY, "train.compile": True})
    with pytest.raises(StudyError, match=r"train.compile is true .*--set train.compile=false"):
        runner.run_study(tmp_path / "ws", cfg)
    assert not (tmp_path / "ws" / "raw").exists()  # no world simulated
    gpu = load_study_config("quick", overrides={"train.compile": True, "train.device": "cuda"})
    runner.check_compiler(gpu)  # on a GPU torch.compile needs no host C++ compiler check here
    runner.check_compiler(load_study_config("quick", overrides={"train.compile": False}))


def test_the_machine_record_names_the_cpu_not_only_its_capability():
    from sepsisrl.threads import cpu, machine

    # two CPUs of one torch capability (AVX512), told apart by vendor, model and flags
    epyc = cpu("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
               "model name\t: AMD EPYC Processor\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n\n"
               "processor\t: 1\nmodel name\t: not the first one\n")  # fmt: skip
    assert epyc == {"vendor": "AuthenticAMD", "model_name": "AMD EPYC Processor", "family": "25",
                    "model": "17", "flags": ["avx2", "fma", "avx512f", "avx512_bf16"]}  # fmt: skip
    xeon = cpu("vendor_id : GenuineIntel\nmodel name : Intel(R) Xeon(R) Processor\n"
               "flags : avx512f amx_bf16 avx512_bf16 amx_tile avx2\n")  # fmt: skip
    assert xeon["flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert xeon["family"] is None and xeon != epyc
    assert machine()["cpu"] == cpu()  # this machine's, in every study/run.json


def test_units_declare_their_threads_and_gpu_to_ray():
    assert unit_resources(EMPTY) == {"num_cpus": 1.0, "num_gpus": 0.0}
    cpu = {"threads": 2, "train": {"config": {"device": "cpu"}}, "eval": {}}
    assert unit_resources(cpu) == {"num_cpus": 2.0, "num_gpus": 0.0}
    gpu = {"threads": 1, "stack": [{"config": {"device": "cpu"}}, {"config": {"device": "cuda:1"}}]}
    assert unit_resources(gpu) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert unit_resources({"threads": 1, "train": {}, "stack": None})["num_gpus"] == 0.0
    # an evaluation on cuda (evaluation.device: the behaviour model and the FQE) needs one too
    ev_gpu = {"threads": 1, "eval": {"cfg": {"device": "cuda"}}}
    assert unit_resources(ev_gpu) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert unit_resources({"threads": 1, "eval": {"cfg": {"device": "cpu"}}})["num_gpus"] == 0.0
    # ray_gpus_per_unit: units on cuda may share a GPU; units on the CPU still declare none
    assert unit_resources(gpu, 0.125) == {"num_cpus": 1.0, "num_gpus": 0.125}
    assert unit_resources(cpu, 0.125)["num_gpus"] == 0.0
    assert load_study_config("quick").ray_gpus_per_unit == 1.0  # configs/study.yaml
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="ray_gpus_per_unit"):
            load_study_config("quick", overrides={"ray_gpus_per_unit": bad})


# ------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """A local Ray instance (2 CPUs) shared by the module. Its workers inherit the test hook's
    variable, disarmed (the marker exists); a test arms it by deleting the marker."""
    ray = pytest.importorskip("ray")
    marker = tmp_path_factory.mktemp("ray") / "exited"
    marker.touch()
    before = os.environ.get(EXIT_ONCE)
    os.environ[EXIT_ONCE] = str(marker)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)  # fmt: skip
    finally:
        if before is None:
            del os.environ[EXIT_ONCE]
        else:
            os.environ[EXIT_ONCE] = before
    yield marker
    ray.shutdown()


def test_ray_runs_a_unit_and_reports_a_raising_one_with_its_name(ray_instance, tmp_path):
    ex = make_executor("ray", 1, tmp_path / "workers.log", None)
    assert isinstance(ex, RayExecutor) and not ex.started  # it uses the running instance
    try:
        assert ex.submit(EMPTY).result(timeout=120)["label"] == "empty"
        with pytest.raises(StudyError, match=r"unit bad unit failed: RuntimeError: .*positive"):
            ex.submit(RAISES).result(timeout=120)
    finally:
        ex.close()
    import ray

    assert ray.is_initialized()  # not ours to stop
    log = (tmp_path / "workers.log").read_text()
    assert "unit bad unit failed on Ray, remote traceback:" in log and "\x1b" not in log
    # the remote frames, down to where the bad thread count was refused
    assert "in execute_unit\n" in log and "in limited_threads\n    torch.set_num_threads(n)" in log


def test_a_ray_worker_lost_mid_unit_is_retried(ray_instance, tmp_path):
    ray_instance.unlink()  # arm the hook: the next unit kills its Ray worker process
    ex = RayExecutor(None, tmp_path / "workers.log")
    try:
        assert ex.submit(EMPTY).result(timeout=180)["label"] == "empty"
    finally:
        ex.close()
    assert ray_instance.is_file()  # the first attempt did die


def test_a_ray_worker_with_other_code_is_refused(ray_instance, tmp_path):
    ex = RayExecutor(None, tmp_path / "workers.log")
    ex.driver = {**ex.driver, "code": "0" * 64}  # as if the driver ran another source tree
    try:
        with pytest.raises(StudyError, match="install the same sepsisrl on every node"):
            ex.submit(EMPTY).result(timeout=120)
    finally:
        ex.close()


#: TINY made smaller still (one trained baseline, no truth) to fit the test in CI
SMALLER = {**TINY, "baselines.trained": {"bc": {"algo": "bc"}}, "truth.enabled": False}


@pytest.mark.slow
def test_ray_and_the_local_pool_give_the_same_bytes_and_share_the_cache(
    ray_instance, small_world, tmp_path, monkeypatch
):
    """A study on the local pool; its copy without the units of the candidates that stopped at
    stage 1 run on Ray: Ray redoes them to the same bytes (same selection and final test
    records) and reuses every other unit of the local pool; a rerun on the local pool reuses
    the units Ray trained."""
    from sepsisrl.study.runner import run_study

    source = small_world.out_dir
    local_cfg = load_study_config("quick", overrides={**SMALLER, "workers": 2})
    ray_cfg = load_study_config("quick", overrides={**SMALLER, "executor": "ray"})
    local_ws, ray_ws = tmp_path / "local", tmp_path / "ray"
    local = run_study(local_ws, local_cfg, source=source)
    # how busy the two workers were: a one-unit phase leaves one of them idle
    clinicians = local.phases["clinicians (validation)"]
    assert clinicians["units"] == 1 and 0 < clinicians["busy_fraction"] <= 0.5 + 1e-3
    assert all(0 < v["busy_fraction"] <= 1 for v in local.phases.values() if "unit_seconds" in v)
    shutil.copytree(local_ws, ray_ws)
    selection = json.loads((ray_ws / "study" / "selection.json").read_text())
    stage1 = [row for c in selection["candidates"] if c["stage"] == 1 for row in c["seeds"]]
    assert len(stage1) == 2
    for row in stage1:
        shutil.rmtree(ray_ws / row["run"])
        shutil.rmtree(ray_ws / row["eval"])
    for record in ("selection.json", "final.json"):
        (ray_ws / "study" / record).unlink()

    ran = run_study(ray_ws, ray_cfg, source=source)
    assert ran.phases["stage 1"]["trained"] == ran.phases["stage 1"]["evaluated"] == len(stage1)
    # on Ray the units' time is known, not the cluster's slots: no busy fraction
    assert ran.phases["stage 1"]["unit_seconds"] > 0
    assert "busy_fraction" not in ran.phases["stage 1"]
    for phase in ("stage 2", "final test"):  # the local pool's units, reused by Ray
        assert ran.phases[phase]["trained"] == 0 and ran.phases[phase]["evaluated"] == 0
    for record in ("study/selection.json", "study/final.json"):
        assert (ray_ws / record).read_bytes() == (local_ws / record).read_bytes()
    # Ray's units, reused by the local pool: found done by the driver, so no worker starts
    from sepsisrl.study import runner

    def no_executor(*args):
        raise AssertionError("an executor was started for units that were all done")

    monkeypatch.setattr(runner, "make_executor", no_executor)
    again = run_study(ray_ws, local_cfg, source=source)
    for phase in ("stage 1", "stage 2", "final test"):
        assert again.phases[phase]["trained"] == 0 and again.phases[phase]["evaluated"] == 0


def test_cli_run_takes_the_executor_and_the_ray_address(tmp_path):
    import subprocess

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sepsisrl.cli", "run", *args],
                              capture_output=True, text=True)  # fmt: skip

    proc = cli("--help")
    assert "--executor" in proc.stdout and "--address" in proc.stdout
    assert "Ray is optional" in proc.stdout and "sepsisrl[ray]" in proc.stdout
    proc = cli("--executor", "dask", "--address", "auto", "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 2
    assert "executor: Input should be 'local' or 'ray' (found 'dask')" in proc.stderr


def test_cli_run_device_sets_training_and_evaluation_devices(tmp_path):
    """``sepsisrl run --device`` is train.device and evaluation.device (the behaviour model and
    the FQE); each is checked at load, before anything is written."""
    import subprocess

    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "sepsisrl.cli", "run", "--device", "gpu",
                           "--workspace", str(ws)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "overrides train.device='gpu', evaluation.device='gpu'" in proc.stderr
    assert "evaluation.device: String should match pattern" in proc.stderr
    assert not ws.exists()
    cfg = load_study_config("quick", overrides={"evaluation.device": "cuda:1"})
    assert cfg.eval_config().device == "cuda:1"
    assert load_study_config("quick").eval_config().device == "cpu"  # configs/evaluate.yaml


def test_recycling_the_pool_replaces_every_idle_worker_and_units_still_run(tmp_path):
    """Each phase of a study starts on fresh workers (memory an earlier phase's units left in
    a worker is not carried into the next phase, docs/run.md); recycling waits for the old
    processes to end and refuses while a unit runs."""
    pool = LocalPool(2, tmp_path / "workers.log")
    try:
        assert pool.submit(EMPTY).result(timeout=120)["label"] == "empty"
        old = list(pool.procs)
        pool.recycle()
        assert all(p.poll() == 0 for p in old)  # ended cleanly, not killed
        assert len(pool.procs) == 2 and not set(pool.procs) & set(old)
        assert all(p.poll() is None for p in pool.procs)
        labels = {pool.submit({**EMPTY, "label": f"u{i}"}).result(timeout=120)["label"]
                  for i in range(3)}  # fmt: skip
        assert labels == {"u0", "u1", "u2"}
        pool.idle.get()  # as if a unit held a worker
        with pytest.raises(RuntimeError, match="units are still running"):
            pool.recycle()
        assert pool.idle.qsize() == 1  # the idle worker was put back
    finally:
        pool.close()


def test_recycling_keeps_the_workers_under_the_memory_limit_and_replaces_the_others(tmp_path):
    """``recycle_workers_above_gib``: a worker whose resident memory is under the limit is kept
    (it saves an interpreter start and the imports), one above it is replaced; where the
    resident size cannot be read it counts as above (every worker is replaced)."""
    from sepsisrl.study import executors

    assert executors.resident_bytes(os.getpid()) < 2**40
    assert executors.resident_bytes(2**22 + 12345) == sys.maxsize  # no such process
    pool = LocalPool(2, tmp_path / "workers.log")
    try:
        for i in range(2):
            pool.submit({**EMPTY, "label": f"u{i}"}).result(timeout=120)
        lean = list(pool.procs)
        pool.recycle(above_bytes=2**40)  # both far below: both kept, still serving
        assert pool.procs == lean and all(p.poll() is None for p in lean)
        assert pool.submit(EMPTY).result(timeout=120)["label"] == "empty"
        # as if the first had grown to 2 GiB and the second held 100 MB: only the first goes
        sizes = {lean[0].pid: 2 * 2**30, lean[1].pid: 100 * 2**20}
        with pytest.MonkeyPatch.context() as m:
            m.setattr(executors, "resident_bytes", sizes.__getitem__)
            pool.recycle(above_bytes=2**30)
        assert pool.procs[1] is lean[1] and pool.procs[0] is not lean[0]
        assert lean[0].poll() == 0 and lean[1].poll() is None  # ended cleanly; still serving
        labels = {pool.submit({**EMPTY, "label": f"v{i}"}).result(timeout=120)["label"]
                  for i in range(3)}  # fmt: skip
        assert labels == {"v0", "v1", "v2"}
    finally:
        pool.close()


def test_workers_are_recycled_before_a_phase_that_simulates_and_kept_before_the_others(
    tmp_path, monkeypatch
):
    """A phase of training and evaluation units keeps the workers whatever they hold (the same
    kinds of units reuse that memory, their compiled steps and the FQE's setup); a phase with
    a unit of the truth (rollouts, the population) gets fresh ones for every worker above
    ``recycle_workers_above_gib``."""
    from sepsisrl.study import executors, runner

    monkeypatch.setattr(executors, "resident_bytes", lambda pid: 2 * 2**30)  # all above 1 GiB
    (tmp_path / "study").mkdir()
    study = runner.Study(tmp_path, load_study_config("quick", overrides={"workers": 2}), None)
    try:
        study.run_units("stage 1", [EMPTY, {**EMPTY, "label": "second"}])
        first = list(study.pool.procs)
        study.run_units("stage 2", [EMPTY])
        assert study.pool.procs == first and all(p.poll() is None for p in first)
        truth = {**EMPTY, "label": "a truth unit", "truths": []}
        study.run_units("baseline tuning", [EMPTY, truth])
        assert not set(study.pool.procs) & set(first)
        again = list(study.pool.procs)
        study.run_units("clinicians", [{**EMPTY, "label": "population", "population": None}])
        assert not set(study.pool.procs) & set(again)
    finally:
        study.close()


def test_with_workers_even_a_single_unit_runs_in_a_worker_not_in_the_driver(tmp_path, monkeypatch):
    """The driver stays lean: a one-unit phase (the clinicians' validation evaluation, ...) ran
    in the driver and left about 1.4 GB there for the rest of a card study. With workers it runs
    in one; with ``workers: 1`` everything still runs in the driver."""
    from sepsisrl.study import runner

    def in_driver(job):
        raise AssertionError(f"{job['label']} ran in the driver")

    monkeypatch.setattr(runner, "execute_unit", in_driver)
    (tmp_path / "study").mkdir()
    fresh = {"workers": 2, "recycle_workers_above_gib": 0}
    study = runner.Study(tmp_path, load_study_config("quick", overrides=fresh), None)
    try:
        study.run_units("one unit", [EMPTY])
        assert study.phases["one unit"]["units"] == 1
        first = list(study.pool.procs)
        study.run_units("next phase", [{**EMPTY, "label": "again"}])
        assert not set(study.pool.procs) & set(first)  # the next phase: fresh workers
    finally:
        study.close()
    lean = runner.Study(tmp_path, load_study_config("quick", overrides={"workers": 2}), None)
    try:  # by default (1 GiB) workers this lean serve the next phase too
        lean.run_units("one unit", [EMPTY])
        first = list(lean.pool.procs)
        lean.run_units("next phase", [{**EMPTY, "label": "again"}])
        assert lean.pool.procs == first
    finally:
        lean.close()
    alone = runner.Study(tmp_path, load_study_config("quick", overrides={"workers": 1}), None)
    with pytest.raises(AssertionError, match="empty ran in the driver"):
        alone.run_units("one unit", [EMPTY])
