"""User mistakes end in one line and exit status 2, whatever raised them; `-v` adds the
traceback; a genuine bug keeps its traceback."""

import json

import pytest

from crossmodal.cli import main


def eval_json(path):
    path.write_text(json.dumps({
        "n_images": 1, "n_pixels": 10, "mean": 10.0, "std": 0.0, "median": 10.0,
        "pixel_mean": 10.0, "below": {"20": 100.0, "25": 100.0, "30": 100.0},
        "dataset": "d", "split": "test", "checkpoint": "c.pt"}))
    return path


def test_a_path_under_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError about a path the user gave (here: a folder that is a file, met by a write
    that no check before the work foresaw) is theirs to fix: one line naming the path,
    status 2."""
    import crossmodal.commands.evaluate as evaluate_command

    result = eval_json(tmp_path / "r.json")
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def write(args):
        raise NotADirectoryError(20, "Not a directory", str(blocker / "table.md"))

    monkeypatch.setattr(evaluate_command, "run_report", write)
    assert main(["-q", "report", str(result), "--out", str(blocker / "table.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crossmodal: error: ")
    assert str(blocker) in err[0] and "check the path" in err[0]


def test_verbose_shows_the_traceback_of_a_user_mistake(tmp_path, capsys):
    missing = str(tmp_path / "missing.json")
    assert main(["-v", "report", missing]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("crossmodal: error: ")
    assert main(["report", missing]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import crossmodal.commands.evaluate as evaluate_command

    def broken(args):
        raise OSError("a failure of the program itself, about no file")

    monkeypatch.setattr(evaluate_command, "run_report", broken)
    with pytest.raises(OSError, match="about no file"):
        main(["-q", "report", "x.json"])


@pytest.mark.parametrize("report", ["DataLoader worker (pid 4242) is killed by signal: "
                                    "Killed. ", "DataLoader worker (pid(s) 4242) exited "
                                    "unexpectedly"])
def test_a_dead_loader_worker_met_outside_the_loader_is_one_line(monkeypatch, capsys, report):
    """PyTorch's SIGCHLD handler raises its report wherever the main process is (in the
    middle of a training step, say), out of the loader's reach: the command line turns it
    into the same one line as the loader does (the subprocess case: test_hangs.py)."""
    import crossmodal.commands.evaluate as evaluate_command

    def worker_dies(args):
        raise RuntimeError(report)

    monkeypatch.setattr(evaluate_command, "run_report", worker_dies)
    assert main(["-q", "report", "x.json"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"crossmodal: error: {report.rstrip('. ')}: a data-loading worker process died "
        f"without an error (killed, or out of memory); run again"), err

    def a_bug(args):
        raise RuntimeError("DataLoader is not a worker: any other RuntimeError is a bug")

    monkeypatch.setattr(evaluate_command, "run_report", a_bug)
    with pytest.raises(RuntimeError, match="any other RuntimeError is a bug"):
        main(["-q", "report", "x.json"])


def test_overrides_may_follow_the_options(tmp_path, monkeypatch):
    """``crossmodal train EXP.yaml --resume train.max_steps=2600`` (argparse alone stops
    the overrides at the first option and rejects the rest as unrecognized)."""
    import crossmodal.commands.train as train_command

    seen = {}
    monkeypatch.setattr(train_command, "run", lambda args: seen.update(vars(args)) or 0)
    assert main(["train", "e.yaml", "a.b=1", "--resume", "train.max_steps=2600",
                 "c=[1, 2]"]) == 0
    assert seen["overrides"] == ["a.b=1", "train.max_steps=2600", "c=[1, 2]"]
    assert seen["resume"] is True
    with pytest.raises(SystemExit) as exit_:
        main(["train", "e.yaml", "--resume", "--no-such-option"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):  # only train takes overrides
        main(["report", "x.json", "--title", "T", "a=1"])


def test_an_experiment_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    experiment = tmp_path / "latin1.yaml"
    experiment.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert main(["-q", "train", str(experiment)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crossmodal: error: experiment file {experiment} is not UTF-8 text "
                   f"(byte 0xe9 on line 1); save it as UTF-8"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "c.pt", "--data", "d", "--panel-count", "-1"],
     "--panel-count must be at least 0, got -1"),
    (["eval", "--checkpoint", "c.pt", "--data", "d", "--workers", "-2"],
     "--workers must be at least 0, got -2"),
    (["eval", "--checkpoint", "c.pt", "--data", "d", "--batch-size", "0"],
     "--batch-size must be at least 1, got 0"),
    (["relight", "n.exr", "--out", "o", "--views", "0"], "--views must be at least 1, got 0"),
])
def test_out_of_range_options_are_one_line_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)  # nothing there: the option is checked before any file
    assert main(argv) == 2
    assert capsys.readouterr().err == f"crossmodal: error: {message}\n"
    assert list(tmp_path.iterdir()) == []
