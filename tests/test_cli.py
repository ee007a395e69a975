"""Tests of the command line: help, bad input, a FAST end-to-end discover run, resume, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from equilib.__main__ import build_parser, main

# small enough for a test, large enough that marglik refits the curvature twice
TINY = [
    "--fast",
    "--epochs",
    "3",
    "--burn-in",
    "1",
    "--marglik-every",
    "1",
    "--hyper-steps",
    "5",
    "--n-train",
    "120",
    "--n-test",
    "20",
    "--width",
    "2",
    "--quiet",
]


def test_help_explains_every_option(capsys):
    for argv in (["--help"], ["discover", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "usage" in text
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("discover", "compare"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} option {action.option_strings} has no help"


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["discover", "--task", "rotated", "--out", "x"], "digits"),
        (["discover", "--task", "digits", "--model", "resnet", "--out", "x"], "f-fc+conv"),
        (["discover", "--task", "digits", "--objective", "elbo", "--out", "x"], "marglik"),
        (["discover", "--task", "digits", "--epochs", "0", "--out", "x"], "positive"),
        (["discover", "--task", "digits", "--epochs", "-3", "--out", "x"], "positive"),
        (["compare", "--models", "mlp"], "conv"),
    ],
)
def test_bad_input_is_refused_with_the_valid_choices(argv, valid, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert valid in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["discover", "--task", "digits", "--out", str(blocker / "sub"), *TINY])
    assert rc == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two FAST discover runs (marglik and MAP) of the same model and task."""
    out = {}
    for objective in ("marglik", "map"):
        d = tmp_path_factory.mktemp(objective)
        rc = main(
            [
                "discover",
                "--task",
                "quadrant",
                "--model",
                "f-fc+conv",
                "--objective",
                objective,
                "--out",
                str(d),
                *TINY,
            ]
        )
        assert rc == 0
        out[objective] = d
    return out


@pytest.mark.slow
def test_discover_writes_result_json_and_png(runs):
    r = json.loads((runs["marglik"] / "result.json").read_text())
    assert r["task"] == "quadrant" and r["model"] == "f-fc+conv" and r["objective"] == "marglik"
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0
    assert len(r["layers"]) == 3
    for layer in r["layers"]:
        assert isinstance(layer["name"], str) and set(layer["paths"]) == {"fc", "conv"}
        for v in layer["paths"].values():
            assert v["prior_precision"] > 0 and v["weight_norm"] >= 0
            assert v["output_precision"] > 0 and v["output_rms"] > 0
            assert 0.0 <= v["knockout_accuracy"] <= 1.0
            assert 0.0 <= v["effective_dimension"]  # the evidence's runs only
    # the accuracy with a path silenced in every block at once
    assert set(r["knockout_everywhere"]) == {"fc", "conv"}
    assert all(0.0 <= v <= 1.0 for v in r["knockout_everywhere"].values())
    mp = json.loads((runs["map"] / "result.json").read_text())
    assert all("effective_dimension" not in v for la in mp["layers"] for v in la["paths"].values())
    # a run by the evidence also reports its network retrained at the precisions it chose
    assert 0.0 <= r["retrained"]["test_accuracy"] <= 1.0 and "retrained" not in mp
    png = (runs["marglik"] / "structure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (runs["marglik"] / "checkpoint.pt").exists()


@pytest.mark.slow
def test_objective_changes_the_prior_precisions(runs):
    ml = json.loads((runs["marglik"] / "result.json").read_text())
    mp = json.loads((runs["map"] / "result.json").read_text())
    prec = lambda r: [
        v["prior_precision"] for layer in r["layers"] for v in layer["paths"].values()
    ]
    d0 = mp["config"]["prior_precision"]
    assert ml["config"]["prior_precision"] == d0
    assert all(p == pytest.approx(d0) for p in prec(mp))  # MAP keeps the prior it was given
    assert max(abs(p / d0 - 1.0) for p in prec(ml)) > 0.05  # marglik learned it
    refits = [v for v in ml["history"]["log_marglik"] if v is not None]
    assert len(refits) == 2 and all(v < 0 for v in refits)
    assert mp["log_marglik"] is None


@pytest.mark.slow
def test_resume_refuses_mismatch_and_corruption_leaving_files_intact(runs, capsys):
    d = runs["marglik"]
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    base = [
        "discover",
        "--task",
        "quadrant",
        "--model",
        "f-fc+conv",
        "--objective",
        "marglik",
        "--out",
        str(d),
        "--resume",
    ]
    rc = main([*base, *TINY, "--lr", "0.5"])
    assert rc == 2 and "different run" in capsys.readouterr().err
    rc = main([*base, *TINY, "--seed", "3"])  # same shapes and optimiser, other data split
    assert rc == 2 and "seed: 3 here, 0 in the checkpoint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    # resuming a finished run with the same settings reproduces its result
    rc = main([*base, *TINY])
    assert rc == 0
    again = json.loads((d / "result.json").read_text())
    first = json.loads(before["result.json"])
    assert again["test_accuracy"] == first["test_accuracy"]
    assert again["layers"] == first["layers"]
    # a corrupted checkpoint
    (d / "checkpoint.pt").write_bytes(b"garbage")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    rc = main([*base, *TINY])
    assert rc == 2 and "corrupted" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


@pytest.mark.slow
def test_compare_prints_a_markdown_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "cache"))
    args = [
        "compare",
        "--task",
        "digits",
        "--models",
        "conv",
        "f-fc+conv",
        "--objectives",
        "map",
        "--out",
        str(tmp_path / "out"),
        *TINY,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2 and "| conv | map |" in rows[0] and "| f-fc+conv | map |" in rows[1]
    assert (tmp_path / "out" / "table.md").read_text().startswith("| task")
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())) == 2
    assert list((tmp_path / "cache").iterdir())  # cached by configuration


def test_degree_subcommand_hands_its_options_to_equilib_degree_cli(monkeypatch, capsys):
    from equilib.degree import cli

    monkeypatch.setattr(
        cli, "add_arguments", lambda p: p.add_argument("--lam", type=float, default=1.0, help="x")
    )
    seen = {}
    monkeypatch.setattr(cli, "run", lambda args: seen.setdefault("lam", args.lam) and 7)
    assert main(["degree", "--lam", "2.5"]) == 7
    assert seen["lam"] == 2.5
    monkeypatch.setenv("COLUMNS", "300")  # the description on one line
    with pytest.raises(SystemExit):
        main(["degree", "--help"])
    assert cli.__doc__.strip().splitlines()[0] in capsys.readouterr().out


def test_no_retrain_switches_the_retraining_off():
    from equilib.__main__ import _config, build_parser

    parse = build_parser().parse_args
    base = ["discover", "--task", "digits", "--out", "x"]
    assert _config(parse(base)).retrain is True
    assert _config(parse([*base, "--no-retrain"])).retrain is False


def test_every_option_the_ablations_of_chapter_07_name_reaches_the_config():
    import re

    from equilib.__main__ import _config, build_parser

    parse = build_parser().parse_args
    base = ["discover", "--task", "digits", "--out", "x"]
    default = _config(parse(base))
    assert (default.fc_scale, default.init) == (0.1, "lsuv")
    changed = _config(parse([*base, "--fc-scale", "0.3", "--init", "default"]))
    assert (changed.fc_scale, changed.init) == (0.3, "default")
    for bad in (["--fc-scale", "0"], ["--fc-scale", "-1"], ["--init", "xavier"]):
        with pytest.raises(SystemExit):
            parse([*base, *bad])
    # every "(--option ...)" in the labels of the chapter's ablation table parses
    chapter = next(Path(__file__).resolve().parents[1].glob("book/07-*.md")).read_text()
    named = re.findall(r"\((--[a-z-]+(?: [^ ()-][^ ()]*)?(?: --[a-z-]+ [^ ()]+)*)\)", chapter)
    assert len(named) >= 8, named
    for options in named:
        parse([*base, *options.split()])
    # and so does every `python -m equilib compare ...` command the chapter names
    text = " ".join(chapter.split())
    commands = re.findall(r"`python -m equilib (compare[^`]*)`", text)
    assert len(commands) >= 4, commands
    for command in commands:
        build_parser().parse_args(command.split())


def test_compare_prints_the_table_alone_on_stdout(tmp_path, monkeypatch, capsys):
    """`compare > table.md` holds the table: progress and the time taken go to stderr, on both
    paths of the runs (one after the other here, or loaded by equilib.runs)."""
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "cache"))
    args = ["compare", "--task", "digits", "--models", "conv", "--objectives", "map", "--fast"]
    args += ["--epochs", "1", "--n-train", "60", "--n-test", "20", "--width", "2"]
    for workers, says in (("1", "digits conv map: ..."), ("2", "loaded from the cache")):
        monkeypatch.setenv("EQUILIB_WORKERS", workers)
        assert main(args) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert len(lines) == 3 and all(line.startswith("| ") for line in lines), out
        assert says in err and "1 run in" in err


def test_help_says_what_each_option_does(capsys):
    from equilib.discover import FAST

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    helps = {name: {a.dest: a.help for a in sub[name]._actions} for name in ("discover", "degree")}
    fast = helps["discover"]["fast"]
    assert "width" not in fast and str(FAST["n_train"]) in fast and str(FAST["epochs"]) in fast
    assert all(str(v) in fast for v in FAST.values()), "the help names every FAST setting"
    assert "plain" in helps["discover"]["striding"] and "polyphase" in helps["discover"]["striding"]
    assert "variance" not in sub["discover"].description
    assert "precision" in sub["discover"].description
    assert "deleting" not in helps["discover"]["overwrite"]
    assert ".replaced-run" in helps["discover"]["overwrite"]
    from equilib.degree.training import experiment_config

    single = experiment_config("rotated")
    assert f"default {single['epochs']}" in helps["degree"]["epochs"]
    assert f"default {single['n_train']}" in helps["degree"]["n_train"]
    assert "--overwrite" in {o for a in sub["compare"]._actions for o in a.option_strings}
    # the README's command-line examples: a line that promises every option shows a command's
    # help (the top-level page lists the commands only)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in readme.splitlines():
        if line.startswith("python -m equilib") and "every option" in line:
            argv = line.split("#")[0].split()[3:]
            assert argv and argv[0] in sub and argv[-1] == "--help", line
            with pytest.raises(SystemExit):
                main(argv)
            assert "--epochs" in capsys.readouterr().out


# each command with the smallest run it takes (were --out accepted, the test stays short)
SMALL = {
    "discover": ["discover", "--task", "digits", *TINY],
    "compare": ["compare", "--task", "digits", "--models", "conv", "--objectives", "map", *TINY],
    "degree": ["degree", "--data", "rotated", "--fast", "--epochs", "1", "--n-train", "32"],
}


@pytest.mark.parametrize("command, out", [("discover", ""), ("compare", ""), ("degree", " ")])
def test_an_empty_out_is_refused(command, out, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*SMALL[command], "--quiet", "--out", out])
    assert e.value.code == 2
    assert "expected the name of an output folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written into the working directory


@pytest.mark.parametrize("command", ["discover", "compare", "degree"])
def test_an_out_that_is_a_file_is_called_a_file(command, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as e:
        main([*SMALL[command], "--quiet", "--out", str(blocker)])
    assert e.value.code == 2
    assert "is a file" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["discover", "compare"])
def test_data_root_without_mnist_is_refused(command, tmp_path, capsys):
    out = tmp_path / "new"
    argv = [command, "--task", "digits", "--out", str(out), "--data-root", str(tmp_path)]
    assert main([*argv, *TINY]) == 2
    assert "needs --source mnist" in capsys.readouterr().err
    assert not out.exists()


def test_a_worker_count_of_zero_is_refused_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUILIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EQUILIB_WORKERS", "0")
    assert main(SMALL["compare"]) == 2
    assert "EQUILIB_WORKERS='0'" in capsys.readouterr().err
