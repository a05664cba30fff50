"""The real scans in datasets/scans: licensed, with 68 landmarks, rendered reproducibly into
the real-scan evaluation set that `make demo` scores."""

import hashlib
from pathlib import Path

import numpy as np

from crossmodal.cli import main
from crossmodal.data.format import read_dataset
from crossmodal.prepare.meshes import read_landmarks

SCANS = Path(__file__).resolve().parents[1] / "datasets" / "scans"


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_scan_has_its_licence_source_and_68_landmarks():
    scans = sorted(SCANS.glob("*/*.obj"))
    assert scans
    for scan in scans:
        assert (scan.parent / "LICENSE.txt").is_file() and (scan.parent / "SOURCE.md").is_file()
        points = read_landmarks(scan.with_suffix(".landmarks.txt"))
        assert points.shape == (68, 3) and np.isfinite(points).all()
        # iBUG order: the chin (8) below the nose tip (30), below the eyes (36-47)
        assert points[8, 1] < points[30, 1] < points[36:48, 1].min()


def test_the_real_scan_set_is_the_same_bytes_for_the_same_seed(tmp_path):
    outs = [tmp_path / name / "real_scans" for name in ("a", "b")]
    for out in outs:
        assert main(["-q", "prepare", "scans", "--raw", str(SCANS), "--out", str(out),
                     "--renders", "2", "--size", "64", "--split", "test", "--seed", "0",
                     "--workers", "1"]) == 0
    assert digest(outs[0]) == digest(outs[1])
    _, samples = read_dataset(outs[0])
    assert len(samples) == 2 and {s.split for s in samples} == {"test"}
