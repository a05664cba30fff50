"""`crossmodal train` never loses an earlier run: a run directory holding checkpoints needs
--resume or --overwrite, and an unwritable one fails before any training."""

import shutil
from pathlib import Path

import pytest

from crossmodal.cli import main

from conftest import one_error_line

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"


def train(data_root, run_dir, *flags, steps=1):
    return main(["-q", "train", str(SMOKE), f"run_dir={run_dir}", f"data.root={data_root}",
                 "data.paired=[synth]", "data.image=[synth]", "data.normal=[synth]",
                 "data.val=[synth]", f"train.max_steps={steps}", "train.val_every=0",
                 *flags])


@pytest.fixture(scope="module")
def earlier_run(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "earlier"
    assert train(data_root, run) == 0
    return run


def test_an_earlier_run_is_refused_without_resume_or_overwrite(
        data_root, earlier_run, capsys):
    before = {p.name: p.read_bytes() for p in earlier_run.glob("*.pt")}
    assert set(before) == {"last.pt", "best.pt"}
    capsys.readouterr()
    assert train(data_root, earlier_run, steps=2) == 2
    line = one_error_line(capsys)
    assert f"{earlier_run} holds an earlier run (last.pt, best.pt)" in line
    assert "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in earlier_run.glob("*.pt")} == before


def test_overwrite_starts_afresh_and_resume_with_overwrite_is_refused(data_root, earlier_run,
                                                                      tmp_path, capsys):
    from crossmodal.checkpoint import load_checkpoint

    run = tmp_path / "again"
    shutil.copytree(earlier_run, run)
    capsys.readouterr()
    assert train(data_root, run, "--resume", "--overwrite", steps=2) == 2
    assert "give one of them" in one_error_line(capsys)
    (run / "best.pt").write_bytes(b"stale")  # must not survive a fresh start
    assert train(data_root, run, "--overwrite", steps=2) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert load_checkpoint(run / "best.pt")["step"] == 2  # written anew by validation


def test_an_unwritable_run_dir_fails_before_training(data_root, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert train(data_root, blocker / "run") == 2
    line = one_error_line(capsys)
    assert f"run_dir {blocker / 'run'}: {blocker} is a file, not a folder" in line
    assert "choose another run_dir" in line


@pytest.mark.parametrize("where", ["synth", "synth/runs/x"])
def test_a_run_dir_in_a_dataset_folder_is_refused_before_anything(data_root, tmp_path,
                                                                  capsys, where):
    """The run's files (and ``--overwrite``'s deletions) never land among the dataset's."""
    data = tmp_path / "data"
    shutil.copytree(data_root / "synth", data / "synth")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert train(data, data / where, "--overwrite") == 2
    line = one_error_line(capsys)
    assert f"run_dir {data / where} is" in line and f"the dataset folder {data / 'synth'}" in line
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_a_run_dir_that_is_the_init_from_checkpoint_is_refused(data_root, earlier_run,
                                                               capsys):
    checkpoint = earlier_run / "last.pt"
    assert train(data_root, checkpoint, f"train.init_from={checkpoint}") == 2
    assert f"is the train.init_from checkpoint {checkpoint}" in one_error_line(capsys)
