"""Tests of equilib.runs: cached jobs, run in worker processes or here."""

import os

import pytest

from equilib import runs


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
