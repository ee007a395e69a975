"""The command line never loses a run, never lets two runs share a folder, and never reports a
diverged run; a resumed run's per-epoch history is whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from equilib import discover
from equilib.__main__ import main
from equilib.cache import FolderBusy, claim_folder

TINY = ["--fast", "--epochs", "2", "--n-train", "120", "--n-test", "20", "--width", "2", "--quiet"]


def _discover(out, *extra):
    return main(
        ["discover", "--task", "digits", "--objective", "map", "--out", str(out), *TINY, *extra]
    )


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_rerun_into_a_finished_run_is_refused_and_says_where(tmp_path, capsys):
    (tmp_path / "result.json").write_text('{"test_accuracy": 0.9}')
    (tmp_path / "checkpoint.pt").write_bytes(b"old checkpoint")
    before = _snapshot(tmp_path)
    assert _discover(tmp_path) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "finished run" in err and "--resume" in err
    assert _snapshot(tmp_path) == before  # nothing touched, no lock left behind
    (tmp_path / "result.json").unlink()
    assert _discover(tmp_path) == 2
    assert "interrupted run" in capsys.readouterr().err
    assert _discover(tmp_path, "--resume", "--overwrite") == 2
    assert "pass one" in capsys.readouterr().err


@pytest.mark.slow
def test_overwrite_starts_over(tmp_path, capsys):
    import stat

    (tmp_path / "result.json").write_text('{"old": true}')
    (tmp_path / "checkpoint.layers.json").write_text("[]")
    old_umask = os.umask(0o022)
    try:
        assert _discover(tmp_path, "--overwrite") == 0
    finally:
        os.umask(old_umask)
    result = json.loads((tmp_path / "result.json").read_text())
    assert "old" not in result and len(result["layers_history"]) == 2
    assert not (tmp_path / ".equilib.lock").exists() and not (tmp_path / ".replaced-run").exists()
    for name in ("result.json", "structure.png", "checkpoint.pt", "checkpoint.layers.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name  # shareable


def test_a_live_lock_refuses_a_second_run(tmp_path, capsys):
    with claim_folder(tmp_path):
        assert (tmp_path / ".equilib.lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(FolderBusy, match=f"process {os.getpid()}"), claim_folder(tmp_path):
            pass
        assert _discover(tmp_path) == 2
        assert "in use by process" in capsys.readouterr().err
    assert not (tmp_path / ".equilib.lock").exists()


def test_two_processes_cannot_both_claim_a_folder(tmp_path):
    code = (
        "import sys; from equilib.cache import claim_folder, FolderBusy\n"
        "try:\n"
        "    with claim_folder(sys.argv[1]):\n"
        "        print('claimed', flush=True); sys.stdin.readline()\n"
        "except FolderBusy:\n"
        "    print('busy', flush=True)\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout.readline().strip() == "claimed"
        second = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.stdout.strip() == "busy"
    finally:
        first.communicate("\n", timeout=120)  # the first run ends: its lock goes
    assert not (tmp_path / ".equilib.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".equilib.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with claim_folder(tmp_path):
        assert (tmp_path / ".equilib.lock").read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / ".equilib.lock").exists()
    # a lock from another host cannot be checked: refused, with the way out
    (tmp_path / ".equilib.lock").write_text("12345 some-other-host\n")
    with pytest.raises(FolderBusy, match="some-other-host.*delete the lock file"):
        with claim_folder(tmp_path):
            pass


@pytest.mark.slow
def test_a_diverged_run_writes_no_result(tmp_path, capsys, monkeypatch):
    assert _discover(tmp_path / "d", "--lr", "1e30") == 2
    err = capsys.readouterr().err
    assert "diverged in epoch 1" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "result.json").exists()
    assert not (tmp_path / "d" / ".equilib.lock").exists()
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "cache"))
    rc = main(
        [
            "compare",
            "--task",
            "digits",
            "--models",
            "conv",
            "--objectives",
            "map",
            "--out",
            str(tmp_path / "c"),
            *TINY,
            "--lr",
            "1e30",
        ]
    )
    assert rc == 2 and "diverged" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing cached
    assert not (tmp_path / "c" / "results.json").exists()


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_run_keeps_the_whole_layer_history(tmp_path, monkeypatch):
    config = discover.default_config(
        True, task="digits", objective="map", epochs=3, n_train=120, n_test=20, width=2
    )
    whole = discover.run(config, progress=False, checkpoint=tmp_path / "a" / "checkpoint.pt")
    real_fit = discover.fit

    def interrupted_fit(*args, callback, **kwargs):
        def stop_after_two(epoch, history, model):
            callback(epoch, history, model)
            if epoch == 2:
                raise _Interrupted

        return real_fit(*args, callback=stop_after_two, **kwargs)

    for lose_last in (False, True):
        ckpt = tmp_path / f"b{lose_last}" / "checkpoint.pt"
        monkeypatch.setattr(discover, "fit", interrupted_fit)
        with pytest.raises(_Interrupted):
            discover.run(config, progress=False, checkpoint=ckpt)
        monkeypatch.setattr(discover, "fit", real_fit)
        layers_file = discover.layers_history_path(ckpt)
        if lose_last:  # killed between the checkpoint and the history file
            saved = json.loads(layers_file.read_text())
            layers_file.write_text(json.dumps(saved[:1]))
        resumed = discover.run(config, progress=False, checkpoint=ckpt, resume=True)
        assert len(resumed["layers_history"]) == 3 and None not in resumed["layers_history"]
        assert resumed["layers_history"] == whole["layers_history"]
        assert resumed["test_accuracy"] == whole["test_accuracy"]


@pytest.mark.slow
def test_a_run_stopped_while_it_retrains_resumes_the_retraining(tmp_path, monkeypatch):
    config = discover.default_config(
        True, task="digits", objective="marglik", epochs=3, n_train=120, n_test=20, width=2,
        burn_in=1, marglik_every=1, hyper_steps=2,
    )  # fmt: skip
    whole = discover.run(config, progress=False)
    real_fit = discover.fit
    trained = []  # (objective, epoch) of every epoch trained after the interruption

    def counting_fit(*args, objective, **kwargs):
        def count(epoch, history, model):
            trained.append((objective, epoch))
            if callback is not None:
                callback(epoch, history, model)

        callback = kwargs.pop("callback", None)
        return real_fit(*args, objective=objective, callback=count, **kwargs)

    def stopped_retraining(*args, objective, **kwargs):
        if objective != "map":
            return real_fit(*args, objective=objective, **kwargs)

        def stop_after_two(epoch, history, model):
            if epoch == 2:
                raise _Interrupted

        return real_fit(*args, objective=objective, callback=stop_after_two, **kwargs)

    ckpt = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(discover, "fit", stopped_retraining)
    with pytest.raises(_Interrupted):
        discover.run(config, progress=False, checkpoint=ckpt)
    assert discover.retrain_checkpoint_path(ckpt).exists()
    monkeypatch.setattr(discover, "fit", counting_fit)
    resumed = discover.run(config, progress=False, checkpoint=ckpt, resume=True)
    assert ("map", 3) in trained and ("map", 1) not in trained and ("map", 2) not in trained
    assert resumed["retrained"]["test_accuracy"] == whole["retrained"]["test_accuracy"]
    assert resumed["retrained"]["history"] == whole["retrained"]["history"]


def test_degree_refuses_a_folder_holding_a_result_or_in_use(tmp_path, capsys):
    (tmp_path / "result.json").write_text("{}")
    before = _snapshot(tmp_path)
    assert main(["degree", "--data", "rotated", "--out", str(tmp_path), "--fast"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "--overwrite" in err
    assert _snapshot(tmp_path) == before
    (tmp_path / "result.json").unlink()
    with claim_folder(tmp_path):
        assert main(["degree", "--data", "rotated", "--out", str(tmp_path), "--fast"]) == 2
        assert "in use by process" in capsys.readouterr().err


def test_claiming_a_folder_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for target in (blocker, blocker / "sub"):
        with pytest.raises(ValueError, match="cannot create the output folder"):
            with claim_folder(target):
                pass


def test_an_interrupted_discover_says_how_to_continue(tmp_path, monkeypatch, capsys):
    def interrupted_after(epochs):
        def run(config, *, checkpoint, **kwargs):
            if epochs:
                checkpoint.write_bytes(b"a finished epoch")
            raise KeyboardInterrupt

        return run

    # before the first epoch has finished: nothing to resume
    monkeypatch.setattr(discover, "run", interrupted_after(0))
    assert _discover(tmp_path / "a") == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "no epoch had finished" in err and "--resume" not in err
    assert "Traceback" not in err and not (tmp_path / "a" / ".equilib.lock").exists()
    # after an epoch: the checkpoint is there to resume from
    monkeypatch.setattr(discover, "run", interrupted_after(1))
    assert _discover(tmp_path / "b") == 130
    err = capsys.readouterr().err
    assert "continue with the same command and --resume" in err
    # --overwrite into a fresh folder replaced nothing: it continues with --resume too
    assert _discover(tmp_path / "c", "--overwrite") == 130
    err = capsys.readouterr().err
    assert "--resume in place of --overwrite" in err and "replace" not in err
    assert not (tmp_path / "c" / ".replaced-run").exists()


@pytest.mark.parametrize("failure", [ValueError("no such data"), KeyboardInterrupt()])
def test_a_failed_overwrite_puts_the_run_it_was_to_replace_back(
    tmp_path, monkeypatch, capsys, failure
):
    (tmp_path / "result.json").write_text('{"test_accuracy": 0.9}')
    (tmp_path / "structure.png").write_bytes(b"old figure")
    (tmp_path / "checkpoint.pt").write_bytes(b"old checkpoint")
    before = _snapshot(tmp_path)

    def fails_after_a_checkpoint(config, *, checkpoint, **kwargs):
        checkpoint.write_bytes(b"half a new run")
        raise failure

    monkeypatch.setattr(discover, "run", fails_after_a_checkpoint)
    assert _discover(tmp_path, "--overwrite") == (
        130 if isinstance(failure, KeyboardInterrupt) else 2
    )
    assert _snapshot(tmp_path) == before  # the old run, whole; no stash, no lock
    err = capsys.readouterr().err
    assert ("no such data" in err) if isinstance(failure, ValueError) else ("--overwrite" in err)


def test_a_stash_left_by_a_killed_overwrite_is_kept_until_a_run_finishes(tmp_path, monkeypatch):
    from equilib.__main__ import STASH

    stash = tmp_path / STASH
    stash.mkdir()
    (stash / "result.json").write_text('{"test_accuracy": 0.9}')  # the run that was replaced
    (tmp_path / "checkpoint.pt").write_bytes(b"the killed run's checkpoint")

    def fails(config, **kwargs):
        raise ValueError("diverged")

    monkeypatch.setattr(discover, "run", fails)
    assert _discover(tmp_path, "--overwrite") == 2
    assert json.loads((tmp_path / "result.json").read_text()) == {"test_accuracy": 0.9}
    assert not (tmp_path / "checkpoint.pt").exists() and not stash.exists()


def test_a_bad_device_is_refused_before_the_output_folder_is_made(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUILIB_DEVICE", "tpu")
    out = tmp_path / "new"
    assert _discover(out) == 2
    err = capsys.readouterr().err
    assert "EQUILIB_DEVICE='tpu'" in err and "'cpu', 'cuda'" in err and not out.exists()


@pytest.mark.slow
def test_a_run_that_finishes_drops_a_stale_stash(tmp_path):
    from equilib.__main__ import STASH

    # an --overwrite killed before its first checkpoint leaves only the stash; the next run
    # into the folder that finishes makes the stashed run obsolete
    (tmp_path / STASH).mkdir()
    (tmp_path / STASH / "result.json").write_text('{"test_accuracy": 0.9}')
    assert _discover(tmp_path) == 0
    assert (tmp_path / "result.json").exists() and not (tmp_path / STASH).exists()


def test_a_plain_rerun_after_a_killed_overwrite_names_the_replaced_run(tmp_path, capsys):
    from equilib.__main__ import STASH

    (tmp_path / STASH).mkdir()
    (tmp_path / STASH / "result.json").write_text('{"test_accuracy": 0.9}')  # being replaced
    (tmp_path / "checkpoint.pt").write_bytes(b"the killed run's checkpoint")
    files = lambda: {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    before = files()
    assert _discover(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{STASH}/" in err and "result.json" in err and "move the files" in err
    assert "--resume" in err and "--overwrite" in err
    assert files() == before  # nothing touched


def _compare(out, *extra):
    return main(
        ["compare", "--task", "digits", "--models", "conv", "--objectives", "map", "--out",
         str(out), *TINY, *extra]
    )  # fmt: skip


def _fake_compare(calls):
    row = {
        "task": "digits", "model": "conv", "objective": "map", "test_accuracy": 0.5,
        "seconds": 1.0, "layers": [], "config": {"n_train": 120},
    }  # fmt: skip

    def compare(*args, **kwargs):
        calls.append(args)
        return [row]

    return compare


def test_compare_checks_its_folder_before_training(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(discover, "compare", _fake_compare(calls))
    # a folder in use by another run: refused, nothing trained
    with claim_folder(tmp_path):
        assert _compare(tmp_path) == 2
        assert "in use by process" in capsys.readouterr().err
    assert calls == []
    # an earlier table is kept unless --overwrite
    (tmp_path / "table.md").write_text("old table\n")
    assert _compare(tmp_path) == 2
    assert "--overwrite" in capsys.readouterr().err and calls == []
    assert (tmp_path / "table.md").read_text() == "old table\n"
    assert _compare(tmp_path, "--overwrite") == 0 and len(calls) == 1
    assert (tmp_path / "table.md").read_text().startswith("| task")
    assert not (tmp_path / ".equilib.lock").exists()
    # a folder of another command's run: refused, also with --overwrite
    for name in ("result.json", "checkpoint.pt", "lambda.png"):
        other = tmp_path / name.split(".")[0]
        other.mkdir()
        (other / name).write_text("{}")
        before = _snapshot(other)
        assert _compare(other, "--overwrite") == 2
        assert "not by `equilib compare`" in capsys.readouterr().err and len(calls) == 1
        assert _snapshot(other) == before


def test_degree_overwrite_leaves_no_plot_of_the_replaced_run(tmp_path, capsys):
    (tmp_path / "result.json").write_text('{"old": true}')
    (tmp_path / "lambda.png").write_bytes(b"the old run's lambda")
    argv = ["degree", "--data", "rotated", "--model", "fc+conv", "--out", str(tmp_path)]
    argv += ["--fast", "--epochs", "1", "--n-train", "32", "--quiet", "--overwrite"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "result.json").read_text())["layers"] == []  # nothing to plot
    assert not (tmp_path / "lambda.png").exists()


def test_refusals_leave_no_new_output_folder(tmp_path, monkeypatch, capsys):
    import torch

    out = tmp_path / "new"
    assert _discover(out, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err and not out.exists()
    if not torch.cuda.is_available():
        assert main(["degree", "--data", "rotated", "--out", str(out), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "left", ["checkpoint.pt", "checkpoint.retrain.pt", "checkpoint.layers.json"]
)
def test_a_fresh_discovery_refuses_another_runs_files_before_training(tmp_path, monkeypatch, left):
    config = discover.default_config(
        True, task="digits", objective="marglik", epochs=2, n_train=60, n_test=20, width=2
    )
    (tmp_path / left).write_bytes(b"another run's")
    monkeypatch.setattr(discover, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(FileExistsError, match=rf"{left}.*pass resume=True"):
        discover.run(config, progress=False, checkpoint=tmp_path / "checkpoint.pt")
    assert (tmp_path / left).read_bytes() == b"another run's"


@pytest.mark.parametrize(
    "command, other_files",
    [
        ("discover", ["table.md"]),
        ("discover", ["results.json", "table.md"]),
        ("discover", ["result.json", "lambda.png"]),  # a degree run
        ("degree", ["table.md"]),
        ("degree", ["result.json", "structure.png", "checkpoint.pt"]),  # a discover run
    ],
)
def test_a_run_never_writes_beside_another_commands_output(tmp_path, capsys, command, other_files):
    for name in other_files:
        (tmp_path / name).write_text("the other command's")
    before = _snapshot(tmp_path)
    if command == "discover":
        argv = ["discover", "--task", "digits", "--out", str(tmp_path), *TINY]
    else:
        argv = ["degree", "--data", "rotated", "--model", "fc+conv", "--out", str(tmp_path)]
        argv += ["--fast", "--epochs", "1", "--n-train", "32", "--quiet"]
    assert main([*argv, "--overwrite"]) == 2  # --overwrite does not lift it
    assert f"not by `equilib {command}`" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
