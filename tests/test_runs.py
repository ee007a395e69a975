"""Tests of equilib.runs: cached jobs, run in worker processes or here."""

import os

import pytest
import torch

from equilib import cache, runs


def _square(config):
    """A job: the square of config["x"] and the process that computed it."""
    return {"value": config["x"] ** 2, "pid": os.getpid()}


def test_jobs_run_in_worker_processes_once_then_load_from_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    jobs = {f"x={x}": runs.Job("square", {"x": x}, _square) for x in (2, 3)}
    first = runs.run_jobs(jobs, workers=2)
    assert list(first) == ["x=2", "x=3"], "results come back in the order of the jobs"
    assert [r["value"] for r in first.values()] == [4, 9]
    assert all(r["pid"] != os.getpid() for r in first.values()), "trained in worker processes"
    out = capsys.readouterr().out
    assert "training 2 runs, 2 at a time" in out and "x=3: done" in out
    again = runs.run_jobs(jobs, workers=2)
    assert again == first, "the second call loads what the first one stored"
    assert capsys.readouterr().out.count("loaded from the cache") == 2


def test_a_run_is_printed_as_started_when_a_process_takes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    jobs = {f"x={x}": runs.Job("square", {"x": x}, _square) for x in (2, 3, 4)}
    out = runs.run_jobs(jobs, workers=2)
    assert [r["value"] for r in out.values()] == [4, 9, 16]
    lines = capsys.readouterr().out.splitlines()
    started = [i for i, ln in enumerate(lines) if ": started" in ln]
    finished = [i for i, ln in enumerate(lines) if ": done" in ln]
    assert [lines[i].strip() for i in started] == [
        "x=2: started (1/3)",
        "x=3: started (2/3)",
        "x=4: started (3/3)",
    ], "in the order of the jobs"
    assert len(finished) == 3
    # two processes: the third run starts only once one of the first two has finished
    assert started[1] < finished[0] < started[2]


def _where(config, device=None):
    """A job that says on which device it was asked to run."""
    return {"x": config["x"], "device": device, "pid": os.getpid()}


def test_a_job_with_a_device_runs_there_in_its_worker_and_is_keyed_without_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    on_cpu = {f"x={x}": runs.Job("where", {"x": x}, _where, device="cpu") for x in (1, 2)}
    assert on_cpu["x=1"].key == runs.Job("where", {"x": 1}, _where).key
    out = runs.run_jobs(on_cpu, workers=2, progress=False)
    assert [r["device"] for r in out.values()] == ["cpu", "cpu"]
    assert all(r["pid"] != os.getpid() for r in out.values())
    # the same configuration without a device is the same cache entry: loaded, not rerun
    plain = {k: runs.Job("where", {"x": j.config["x"]}, _where) for k, j in on_cpu.items()}
    assert runs.run_jobs(plain, workers=2, progress=False) == out
    with pytest.raises(TypeError, match="device must be a string"):
        runs.Job("where", {"x": 1}, _where, device=0)


def test_a_single_missing_job_runs_here(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    out = runs.run_jobs({"a": runs.Job("square", {"x": 5}, _square)}, workers=2, progress=False)
    assert out["a"] == {"value": 25, "pid": os.getpid()}


def test_bad_jobs_are_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="module-level function"):
        runs.Job("square", {"x": 1}, lambda c: c)
    with pytest.raises(ValueError, match="non-empty name"):
        runs.Job("", {"x": 1}, _square)
    with pytest.raises(TypeError, match="must be a dict"):
        runs.Job("square", [1], _square)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        runs.run_jobs({}, workers=0)
    with pytest.raises(TypeError, match="equilib.runs.Job"):
        runs.run_jobs({"a": _square})


def test_build_trained_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind"):
        runs.build_trained("nonsense", {}, {"n_classes": 2, "state": {}})


def test_a_job_is_keyed_by_its_configuration_and_its_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path))
    job = runs.Job("square", {"x": 4}, _square)
    assert job.code == runs.RUN_CODE
    assert job.key == {"x": 4, "code": cache.code_fingerprint(runs.RUN_CODE)}
    first = runs.run_jobs({"a": job}, workers=1)
    assert runs.run_jobs({"a": job}, workers=1) == first
    assert "loaded from the cache" in capsys.readouterr().out
    # the same configuration with changed library code is another entry: it trains again
    monkeypatch.setattr(runs, "with_code", lambda config, files: {**config, "code": "changed"})
    assert job.key != {"x": 4, "code": cache.code_fingerprint(runs.RUN_CODE)}
    assert not runs._is_cached(job)
    runs.run_jobs({"a": job}, workers=1)
    out = capsys.readouterr().out
    assert "training" in out and "loaded from the cache" not in out
    with pytest.raises(TypeError, match="sequence of file names"):
        runs.Job("square", {"x": 1}, _square, code="runs.py")


def test_code_fingerprint_changes_with_the_code_and_nothing_else(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, text in ((a, "x = 1\n"), (b, "x = 2\n")):
        (root / "pkg").mkdir(parents=True)
        (root / "run.py").write_text("def f():\n    return 0\n")
        (root / "pkg" / "m.py").write_text(text)
        (root / "pkg" / "notes.txt").write_text(str(root))  # not code: not hashed
    files = ("run.py", "pkg")
    assert len(cache.code_fingerprint(files, root=a)) == 16
    assert cache.code_fingerprint(files, root=a) != cache.code_fingerprint(files, root=b)
    assert cache.code_fingerprint(("run.py",), root=a) == cache.code_fingerprint(
        ("run.py",), root=b
    )
    assert cache.with_code({"x": 1}, ("cache.py",)) == {
        "x": 1,
        "code": cache.code_fingerprint(("cache.py",)),
    }
    with pytest.raises(FileNotFoundError, match="missing.py"):
        cache.code_fingerprint(("missing.py",), root=a)


def test_discover_and_runs_share_one_fingerprint():
    from equilib import discover

    assert discover.code_fingerprint() == cache.code_fingerprint(discover.CODE_FILES)
    config = discover.default_config(True)
    job_key = runs.Job(
        "discover", discover._config_key(config), discover._run_entry, code=discover.CODE_FILES
    ).key
    assert job_key == discover.cache_entry(config), "run_many and run_cached share entries"


def test_build_trained_rebuilds_the_model_each_training_function_builds():
    from equilib.degree.training import experiment_config

    torch.manual_seed(0)
    config = {
        "model": "gconv-c4",
        "width": 2,
        "transforms": ["rotation"],
        "init_width": 0.5,
        "dcfg": experiment_config("rotated", width=2),
    }
    x = torch.rand(3, 1, 16, 16)
    for kind in runs.KINDS:
        trained = runs.new_model(kind, config, 4).eval()
        result = {"n_classes": 4, "state": trained.state_dict(), "dcfg": config["dcfg"]}
        again = runs.build_trained(kind, config, result)
        assert not again.training
        if kind == "augerino":  # samples transformations: compare the network behind it
            trained, again = trained.model, again.model
        torch.testing.assert_close(again(x), trained(x))


def test_run_many_starts_the_longest_runs_first_and_answers_in_the_callers_order(monkeypatch):
    from equilib import discover

    configs = {
        (model, objective): discover.default_config(True, model=model, objective=objective)
        for model in ("conv", "fc", "f-fc+conv")
        for objective in ("map", "marglik")
    }
    submitted = []

    def fake_run_jobs(jobs, workers, progress):
        submitted.extend(jobs)
        return {name: {"name": name} for name in jobs}

    monkeypatch.setattr(runs, "run_jobs", fake_run_jobs)
    out = discover.run_many(configs, workers=2, progress=False)
    assert list(out) == list(configs), "results in the order of the configurations"
    assert [r["name"] for r in out.values()] == [" ".join(k) for k in configs]
    costs = [discover.expected_cost(configs[tuple(name.split())]) for name in submitted]
    assert costs == sorted(costs, reverse=True)
    assert submitted[:3] == ["fc marglik", "f-fc+conv marglik", "conv marglik"]


def test_a_script_without_the_main_guard_is_told_what_to_do(tmp_path):
    """Worker processes import the script that started them; without the guard each one starts
    the runs again and dies, and the error names the guard instead of a broken pool."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "import json\n"
        "from equilib import runs\n"
        "jobs = {k: runs.Job('guard', {'k': k}, json.dumps) for k in ('a', 'b')}\n"
        "runs.run_jobs(jobs, workers=2, progress=False)\n"
    )
    env = {**os.environ, "EQUILIB_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError") and 'if __name__ == "__main__":' in last, last
