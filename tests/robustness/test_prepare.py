"""``crossmodal prepare``: bad ``--raw``/``--out``, options out of range, a folder of other
options or of another dataset, bad raw items, and re-runs on a finished folder; shown with
the ``celebahq`` recipe, the command offering that recipe only (the helpers of
tests/test_prepare_celebahq.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from crossmodal.cli import main
from crossmodal.photos import BUNDLED_PHOTOS
from crossmodal.prepare import celebahq
from crossmodal.prepare.common import REPORT_FILE

from conftest import one_error_line
from test_prepare_celebahq import SIZE, CountingDetector, folder_bytes, make_raw, prepare


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_raw(tmp_path_factory.mktemp("prepare") / "raw")


@pytest.fixture
def detector(monkeypatch):
    """No detector may be made: the command must stop before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the recipe started work")
    monkeypatch.setattr(celebahq, "make_detector", refuse)


def test_a_missing_raw_or_a_file_is_one_line(tmp_path, monkeypatch, capsys, detector):
    assert prepare(monkeypatch, tmp_path / "nowhere", tmp_path / "out") == 2
    assert f"--raw {tmp_path / 'nowhere'} does not exist" in one_error_line(capsys)
    file = tmp_path / "raw.jpg"
    file.write_bytes(b"")
    assert prepare(monkeypatch, file, tmp_path / "out") == 2
    assert f"--raw {file} is not a folder" in one_error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare(monkeypatch, empty, tmp_path / "out") == 2
    assert f"--raw {empty} holds no image" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_out_inside_raw_and_raw_inside_out_are_refused(raw, tmp_path, monkeypatch, capsys,
                                                       detector):
    before = folder_bytes(raw)
    assert prepare(monkeypatch, raw, raw / "crops") == 2
    assert "inside the raw folder" in one_error_line(capsys)
    assert prepare(monkeypatch, raw, raw.parent) == 2
    assert f"--raw {raw} lies inside --out {raw.parent}" in one_error_line(capsys)
    assert folder_bytes(raw) == before and not (raw / "crops").exists()


def test_an_out_holding_a_synth_dataset_is_refused_unchanged(raw, tmp_path, monkeypatch,
                                                             capsys, detector):
    out = tmp_path / "synth"
    assert main(["-q", "synth", "--out", str(out), "--count", "2", "--size", "32",
                 "--workers", "1"]) == 0
    before = folder_bytes(out)
    assert prepare(monkeypatch, raw, out) == 2
    assert f"--out {out} holds a dataset not written by `crossmodal prepare celebahq`" in (
        one_error_line(capsys))
    assert folder_bytes(out) == before


def test_a_rerun_with_other_options_names_them(raw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "celebahq"
    assert prepare(monkeypatch, raw, out, "--count", "1") == 0
    before = folder_bytes(out)
    assert prepare(monkeypatch, raw, out, "--count", "2", "--size", "96") == 2
    assert f"{out} was made by `crossmodal prepare celebahq` with other options" in (
        line := one_error_line(capsys))
    assert f"--count 1 (now 2), --size {SIZE} (now 96)" in line
    assert folder_bytes(out) == before


@pytest.mark.parametrize("option, value, message", [
    ("--workers", "0", "--workers must be at least 1, got 0"),
    ("--seed", "-1", "--seed must be a non-negative integer, got -1"),
    ("--size", "50", "--size 50 is not a positive multiple of 32"),
    ("--count", "0", "--count must be at least 1, got 0"),
])
def test_out_of_range_options_are_one_line_before_any_work(raw, tmp_path, monkeypatch, capsys,
                                                           detector, option, value, message):
    assert prepare(monkeypatch, raw, tmp_path / "out", option, value) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_bad_raw_items_are_listed_and_the_rest_written(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    photo = BUNDLED_PHOTOS["grace_hopper"].read_bytes()
    (raw / "good.jpg").write_bytes(photo)
    (raw / "cut.jpg").write_bytes(photo[:len(photo) // 2])
    (raw / "notes.jpg").write_text("not a picture\n", encoding="utf-8")
    shutil.copy(make_raw(tmp_path / "made") / "no_face.png", raw / "blank.png")
    out = tmp_path / "out"
    assert prepare(monkeypatch, raw, out, "--count", "4") == 0
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert report["counts"] == {"image": 1}
    assert reasons.keys() == {"cut.jpg", "notes.jpg", "blank.png"}
    assert "truncated or corrupt" in reasons["cut.jpg"]
    assert "not a PNG or JPEG file" in reasons["notes.jpg"]
    assert reasons["blank.png"].startswith("no face found")
    assert (out / "samples.csv").read_text(encoding="utf-8").splitlines()[1].startswith(
        "good,good,train,images/good.png,,masks/good.png")


@pytest.mark.parametrize("count", [3, 20], ids=["complete", "raw-exhausted"])
def test_a_rerun_on_a_finished_folder_does_no_work(raw, tmp_path, monkeypatch, count):
    detector = CountingDetector()
    monkeypatch.setattr(celebahq, "make_detector", detector.make)
    out = tmp_path / "celebahq"
    assert prepare(monkeypatch, raw, out, "--count", str(count)) == 0
    assert detector.calls >= 3
    before = folder_bytes(out)
    detector.calls = detector.made = 0
    assert prepare(monkeypatch, raw, out, "--count", str(count)) == 0
    assert (detector.calls, detector.made) == (0, 0)  # no detection, no model loaded
    assert folder_bytes(out) == before
