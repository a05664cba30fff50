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


def test_an_experiment_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    experiment = tmp_path / "latin1.yaml"
    experiment.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert main(["-q", "train", str(experiment)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crossmodal: error: experiment file {experiment} is not UTF-8 text "
                   f"(byte 0xe9 on line 1); save it as UTF-8"]
