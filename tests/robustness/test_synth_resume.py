"""``crossmodal synth`` on a partial or foreign folder and with out-of-range arguments
(issue 10, classes 2, 4 and 6): a damaged file of a row counted as done is rendered again,
temporaries left by a killed write are removed, ``--workers`` follows the cores, and a
folder holding another dataset, or a file, is refused before anything is rendered."""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from crossmodal import io
from crossmodal.cli import build_parser, main
from crossmodal.data.format import DatasetInfo, DatasetWriter, read_dataset
from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

from conftest import one_error_line

# Every identity paired, so that every row has an image, a normal map and a mask.
SMALL = replace(SynthConfig(), size=64, kind_weights=(1.0, 0.0, 0.0))
COUNT = 6


def folder_digest(root):
    """Every file's bytes (hidden ones too), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run, in a folder named ``synth`` like the copies (the name is
    recorded in dataset.json)."""
    return generate(tmp_path_factory.mktemp("whole") / "synth", COUNT, config=SMALL,
                    progress=False)


@pytest.fixture
def part(whole, tmp_path):
    return shutil.copytree(whole, tmp_path / "synth")


def test_damaged_files_of_done_rows_are_rendered_again(whole, part):
    image, normals, mask = (part / "images/synth_000001.png", part / "normals/synth_000002.exr",
                            part / "masks/synth_000003.png")
    image.write_bytes(image.read_bytes()[:len(image.read_bytes()) // 2])  # truncated
    normals.write_bytes(normals.read_bytes()[:100])
    mask.write_bytes(b"")
    generate(part, COUNT, config=SMALL, progress=False)
    assert folder_digest(part) == folder_digest(whole)


def test_leftover_temporaries_of_a_killed_write_are_removed(whole, part):
    # Names as fileutil.atomic_write makes them, in the dataset folder and a media folder.
    (part / ".samples.0123456789ab.tmp.csv").write_text("id,subj")
    (part / "images/.synth_000004.abcdef012345.tmp.png").write_bytes(b"\x89PNG")
    keep = part / "images/.notes"  # not a temporary: the user's, left alone
    keep.write_text("mine")
    generate(part, COUNT, config=SMALL, progress=False)
    digest = folder_digest(part)
    assert digest.pop("images/.notes") and digest == folder_digest(whole)


def test_workers_default_to_the_available_cores():
    args = build_parser().parse_args(["synth", "--out", "x", "--count", "1"])
    assert args.workers is None  # resolved by crossmodal.parallel.pool_size


def test_workers_beyond_the_samples_left_are_capped_with_a_note(whole, part, caplog):
    os.unlink(part / "images/synth_000005.png")  # one sample left to render
    with caplog.at_level(logging.INFO, logger="crossmodal.parallel"):
        generate(part, COUNT, config=SMALL, workers=64, progress=False)
    assert "--workers 64 capped to 1 (1 sample left" in caplog.text
    assert folder_digest(part) == folder_digest(whole)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--count", "0"], "--count must be at least 1, got 0"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--set", "skin_detial=1"], "unknown synth setting 'skin_detial'; valid: "),
    (["--set", "camera_effects=2"], "synth setting camera_effects is a probability"),
    (["--set", "size=32"], "size has its own option: use --size"),
    (["--set", "crop_jitter"], "--set takes KEY=VALUE"),
])
def test_out_of_range_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    args = ["synth", "--out", str(tmp_path / "x"), "--count", "2", "--size", "64", *argv]
    assert main(args) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_a_folder_holding_another_dataset_is_refused_before_rendering(tmp_path, capsys):
    other = tmp_path / "faces"
    info = DatasetInfo(name="faces", source="my scans", license="mine", image_size=64,
                       crop="none", created_by="my converter")
    with DatasetWriter(other, info) as writer:
        writer.add("a", "s1", "train", image=np.zeros((64, 64, 3)))
    before = folder_digest(other)
    assert main(["synth", "--out", str(other), "--count", "2", "--size", "64"]) == 2
    err = one_error_line(capsys)
    assert f"--out {other} holds a dataset not written by synth" in err
    assert folder_digest(other) == before


def test_a_folder_with_unreadable_synth_options_is_refused(whole, part, capsys):
    (part / "synth.json").write_text("{not json")
    assert main(["synth", "--out", str(part), "--count", str(COUNT), "--size", "64"]) == 2
    assert f"{part / 'synth.json'} is not valid JSON" in one_error_line(capsys)


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "data.txt"
    out.write_text("mine")
    assert main(["synth", "--out", str(out), "--count", "2", "--size", "64"]) == 2
    assert f"--out {out} is an existing file, not a folder" in one_error_line(capsys)
    assert out.read_text() == "mine"


def test_a_run_stopped_before_its_first_sample_does_not_block_the_corrected_one(
        whole, part, capsys):
    """A run begun with a wrong option and stopped before any sample was saved leaves
    synth.json and dataset.json behind; the re-run with the corrected options starts the
    folder afresh (before the fix: refused as "generated with other options")."""
    (part / "samples.csv").unlink()  # what a run killed before its first flush leaves
    corrected = ["synth", "--out", str(part), "--count", "2", "--size", "32", "--workers", "1"]
    assert main(["-q", *corrected]) == 0
    info, samples = read_dataset(part)
    assert info.image_size == 32 and [s.id for s in samples] == ["synth_000000",
                                                                 "synth_000001"]
    assert all(io.read_image(s.image).shape == (32, 32, 3) for s in samples if s.image)
    assert json.loads((part / "synth.json").read_text())["config"]["size"] == 32


def test_a_folder_with_finished_samples_of_other_options_names_the_differences(
        whole, part, capsys):
    before = folder_digest(part)
    assert main(["synth", "--out", str(part), "--count", "8", "--size", "32", "--kinds",
                 "1,0,0"]) == 2
    assert (f"{part} was made by synth with other options ({part / 'synth.json'}: --count 6 "
            f"(now 8), --size 64 (now 32)); re-run with the same options to complete it, "
            f"delete the folder, or choose a new --out") in one_error_line(capsys)
    assert folder_digest(part) == before
