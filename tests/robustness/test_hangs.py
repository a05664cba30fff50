"""Nothing hangs (issue 10, class 1): a failure inside a DataLoader worker (training,
validation, evaluation) or a rendering worker (``synth``) ends the whole process within
seconds with one line naming the sample, and a worker killed without an exception is
reported, not waited on for ever. The commands run as subprocesses under a timeout, so a
hang fails the test instead of stalling the suite."""

import csv
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from crossmodal.checkpoint import save_checkpoint
from crossmodal.data.loader import SafeDataLoader
from crossmodal.errors import InputError
from crossmodal.models import CrossModalNet
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

from conftest import EXPERIMENTS, smoke_model

#: The acceptance bound of issue 10: a failing or crashed run ends within this many seconds.
LIMIT_S = 30


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """8 synthetic 64 px faces in ``ROOT/synth`` (train, val and test rows); tests corrupt
    their own copy (:func:`dataset_copy`)."""
    root = tmp_path_factory.mktemp("faces")
    generate(root / "synth", 8, seed=0, progress=False,
             config=replace(SynthConfig(), size=64, samples_per_subject=2))
    return root


def dataset_copy(faces: Path, tmp_path: Path) -> Path:
    """A data root of its own holding a copy of the ``synth`` folder."""
    shutil.copytree(faces, tmp_path / "data")
    return tmp_path / "data"


def first_image(folder: Path, split: str) -> tuple[str, Path]:
    """(id, image path) of the first row of ``split`` with an image and normals."""
    with open(folder / "samples.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == split and r["image"]
                   and r["normal"])
    return row["id"], folder / row["image"]


def corrupt(folder: Path, split: str) -> tuple[str, Path]:
    """Overwrite the first paired image of ``split`` with garbage; its (id, path)."""
    sample_id, image = first_image(folder, split)
    image.write_bytes(b"\x89PNG but not really" * 16)
    return sample_id, image


def crossmodal(*args: str, timeout: float = LIMIT_S) -> subprocess.CompletedProcess:
    start = time.monotonic()
    try:
        return subprocess.run([sys.executable, "-m", "crossmodal", "-q", *args],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"crossmodal {' '.join(args[:1])} did not exit within {timeout} s "
                    f"(started {time.monotonic() - start:.0f} s ago); stderr: "
                    f"{(err.stderr or b'')[-2000:]!r}")


def the_error_line(stderr: str) -> str:
    """The one ``crossmodal: error:`` line of ``stderr``, which has no traceback (the
    progress bars and warnings around it are allowed)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crossmodal: error: "), stderr
    return lines[0]


def train_args(root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """``train`` on the smoke experiment (the tiny model) with the data in ``root``."""
    return ["train", str(EXPERIMENTS / "smoke.yaml"), f"data.root={root}",
            "data.paired=[synth]", "data.image=[synth]", "data.normal=[synth]",
            f"run_dir={run_dir}", "data.num_workers=2", *overrides]


# The validation loader shares the training loader's class: its case runs with -m slow.
@pytest.mark.parametrize("split", ["train", pytest.param("val", marks=pytest.mark.slow)])
def test_a_corrupt_image_read_by_a_loader_worker_ends_train(faces, tmp_path, split):
    """Training batches (split train) and validation batches (val) are read by two
    workers; the corrupt image ends the run with status 2 and one line naming the sample
    and its file (before the fix: the error printed with the worker's traceback, and the
    process then waited for its workers for ever)."""
    root = dataset_copy(faces, tmp_path)
    sample_id, image = corrupt(root / "synth", split)
    done = crossmodal(*train_args(root, tmp_path / "run", "data.val=[synth]",
                                  "train.val_every=1"))
    assert done.returncode == 2, done.stderr
    line = the_error_line(done.stderr)
    assert f"sample {sample_id!r}" in line and str(image) in line, line


def test_a_corrupt_image_read_by_a_loader_worker_ends_eval(faces, tmp_path):
    root = dataset_copy(faces, tmp_path)
    sample_id, image = corrupt(root / "synth", "test")
    torch.manual_seed(0)
    model = smoke_model()
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", model=CrossModalNet(model).eval(),
                                 config={"name": "tiny", "model": model.to_dict()})
    done = crossmodal("eval", "--checkpoint", str(checkpoint), "--data", str(root / "synth"),
                      "--workers", "2", "--batch-size", "1", "--device", "cpu")
    assert done.returncode == 2, done.stderr
    line = the_error_line(done.stderr)
    assert f"sample {sample_id!r}" in line and str(image) in line, line


class Failing(torch.utils.data.Dataset):
    """Item 3 is a user's mistake (an :class:`InputError`)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        if index == 3:
            raise InputError(f"data: sample 'face_{index}': cannot read image x.png")
        return index


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_reraises_a_worker_mistake_as_its_message_and_stops_its_workers(workers):
    before = set(multiprocessing.active_children())
    loader = SafeDataLoader(Failing(), batch_size=2, num_workers=workers)
    with pytest.raises(InputError) as info:
        list(loader)
    assert str(info.value) == "data: sample 'face_3': cannot read image x.png"
    # Stopped at once, although the exception's traceback references the iterator.
    assert set(multiprocessing.active_children()) <= before


def train_after(faces: Path, tmp_path: Path, setup: str) -> tuple[int, str]:
    """(exit status, stderr) of ``crossmodal train`` with two loader workers, run after the
    Python statements ``setup`` (which see ``os``, ``signal``, ``get_worker_info``,
    PyTorch's ``dataloader`` module and ``FaceNormalsDataset``) in the same process; fails
    the test unless it ends within :data:`LIMIT_S`."""
    args = ["-q", *train_args(faces, tmp_path / "run", "data.val=[]")]
    script = (
        "import os, signal, sys\n"
        "from torch.utils.data import dataloader, get_worker_info\n"
        "from crossmodal.cli import main\n"
        "from crossmodal.data.dataset import FaceNormalsDataset\n"
        f"{textwrap.dedent(setup)}\n"
        f"sys.exit(main({args!r}))\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"train did not exit within {LIMIT_S} s after {setup!r}")
    return done.returncode, done.stderr


@pytest.mark.slow  # a train subprocess (~5 s); the default run keeps two
def test_a_bug_in_a_loader_worker_ends_train_with_its_traceback(faces, tmp_path):
    """Not a user mistake: the worker's traceback is shown, and the run ends (before the fix:
    it then waited for its workers for ever)."""
    status, stderr = train_after(faces, tmp_path, """
        def broken(self, index):
            return 1 / 0
        FaceNormalsDataset.__getitem__ = broken
    """)
    assert status == 1, stderr
    assert "Caught ZeroDivisionError in DataLoader worker process" in stderr
    assert "in broken\nZeroDivisionError: division by zero" in stderr  # the worker's


@pytest.mark.slow  # ~10 s (PyTorch's 5 s worker-status interval); -m slow runs it
def test_a_killed_loader_worker_ends_train(faces, tmp_path):
    """A loader worker killed without an exception (as the out-of-memory killer does) is
    reported in one line, naming it and what to do, and the run ends (before the fix: when
    the death was detected while the loop waited for a batch, the run then waited for the
    other worker for ever; later, PyTorch's traceback and exit status 1)."""
    status, stderr = train_after(faces, tmp_path, """
        original = FaceNormalsDataset.__getitem__
        def first_worker_dies(self, index):
            if get_worker_info().id == 0:  # the other one lives on and must be stopped
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, index)
        FaceNormalsDataset.__getitem__ = first_worker_dies
    """)
    assert status == 2, stderr
    # PyTorch's SIGCHLD handler raises wherever the main process is; code of PyTorch's
    # that catches it there may log its own warning first. The run's last word is ours.
    last = stderr.splitlines(keepends=True)[-1]
    assert re.fullmatch(r"crossmodal: error: DataLoader worker \(pid(\(s\))? [\d, ]+\) (is "
                        r"killed by signal: Killed|exited unexpectedly): a data-loading worker "
                        r"process died without an error \(killed, or out of memory\); run "
                        r"again, .*--resume.*\n", last), stderr


@pytest.mark.slow  # a train subprocess (~5 s); the default run keeps two
def test_a_failure_while_the_loader_starts_ends_train(faces, tmp_path):
    """A worker's death can be reported while PyTorch is still building the loader's
    iterator (an error from its ``_reset``, simulated here), which then never reaches the
    loop: the workers are stopped at exit all the same (before the fix: the run waited for
    them for ever). This depends on a private method of PyTorch's, which the Makefile pins."""
    status, stderr = train_after(faces, tmp_path, """
        reset = dataloader._MultiProcessingDataLoaderIter._reset
        def failing_reset(self, *args, **kwargs):
            reset(self, *args, **kwargs)
            raise RuntimeError("simulated: a worker died during start-up")
        dataloader._MultiProcessingDataLoaderIter._reset = failing_reset
    """)
    assert status == 1, stderr
    assert stderr.endswith("RuntimeError: simulated: a worker died during start-up\n"), stderr


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def kill_a_worker(process: subprocess.Popen, workers: int) -> None:
    """SIGKILL one of the ``workers`` child processes of ``process`` once they all run."""
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline and process.poll() is None:
        found = children(process.pid)
        if len(found) >= workers:
            os.kill(found[-1], signal.SIGKILL)
            return
        time.sleep(0.05)
    pytest.fail(f"no {workers} worker processes appeared; stderr: "
                f"{process.communicate()[1][-2000:]!r}")


def wait(process: subprocess.Popen, what: str) -> tuple[int, str]:
    """(exit status, stderr) of ``process``, which must end within :data:`LIMIT_S`."""
    try:
        _, stderr = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stderr = process.communicate()[1]
        pytest.fail(f"{what} did not end within {LIMIT_S} s; stderr: {stderr[-2000:]!r}")
    return process.returncode, stderr


def test_a_killed_synth_worker_ends_synth(tmp_path):
    """A rendering worker killed without an exception ends ``synth`` with status 2 and one
    line saying so and how to continue (before the fix: the pool waited for ever for the
    killed worker's samples); a re-run completes the folder."""
    out = tmp_path / "faces"
    args = ["-q", "synth", "--out", str(out), "--count", "400", "--size", "64", "--workers",
            "2"]
    script = ("import sys\n"
              "import crossmodal.parallel as parallel\n"
              "parallel.available_cores = lambda: 2  # a pool of two even on one core\n"
              "from crossmodal.cli import main\n"
              f"sys.exit(main({args!r}))\n")
    process = subprocess.Popen([sys.executable, "-c", script],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    kill_a_worker(process, 2)
    status, stderr = wait(process, "synth with a killed worker")
    assert status == 2, stderr
    line = the_error_line(stderr)
    assert "rendering worker" in line and "re-run the same command" in line, line


def test_an_exception_in_a_synth_worker_names_the_sample(tmp_path, monkeypatch):
    """A failure inside a rendering worker ends ``generate`` at once, its traceback naming
    the sample (before the fix: the error did not say which sample)."""
    import crossmodal.parallel as parallel
    import crossmodal.synth.generate as module

    def render(planned, seed, config):
        if planned.id == "synth_000003":
            raise ValueError("injected failure")
        return render_sample(planned, seed, config)

    render_sample = module.render_sample
    monkeypatch.setattr(module, "render_sample", render)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)  # a pool, even on one core
    with pytest.raises(ValueError, match="injected failure") as info:
        generate(tmp_path / "faces", 6, workers=2, progress=False,
                 config=replace(SynthConfig(), size=64))
    assert "while rendering sample synth_000003 (seed 0)" in info.value.__notes__
