"""Every notebook in ``notebooks/`` runs top to bottom and prints what it claims.

Each notebook is executed with nbclient on the ``python3`` kernel of the interpreter running
pytest: ipykernel installs its kernelspec under ``sys.prefix/share/jupyter/kernels`` and
jupyter_client finds it there (or falls back to ipykernel's built-in spec), replacing the
spec's bare ``python`` with ``sys.executable``, so nothing is installed at test time. The
kernel runs in an empty temporary folder, which must still be empty afterwards: notebooks
write only to their own temporary directories, never into the repository.

Notebooks that read the user's files (a checkpoint, eval results) take their paths from an
environment variable; the test makes small such files in a temporary folder beside the
working folder and sets the variable, which the kernel inherits: jupyter_client launches
it with a copy of ``os.environ`` taken at start-up (``provisioner_base.pre_launch``).

The stored notebooks must carry no outputs, so the repository stays small and diffs stay
readable (execute them locally, then clear outputs before committing).
"""

import ast
import re
import sys
from pathlib import Path

import pytest
import torch

from crossmodal.checkpoint import save_checkpoint
from crossmodal.cli import main
from crossmodal.evaluate import metrics_json
from crossmodal.models import CrossModalNet
from crossmodal.photos import BUNDLED_PHOTOS

from conftest import smoke_model

nbformat = pytest.importorskip("nbformat", reason="needs the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="needs the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="needs the test extra: pip install -e '.[test]'")
pytest.importorskip("matplotlib", reason="the notebooks draw with matplotlib: pip install "
                                         "-e '.[test]'")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
TIMEOUT_S = 300  # per cell


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _check_kernel_is_this_interpreter() -> None:
    """Fail with the fix, rather than run the notebook in another Python, when the
    ``python3`` kernelspec is missing or points at a different interpreter (say a user-level
    spec outside a virtual environment)."""
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import KernelManager

    try:
        cmd = KernelManager(kernel_name=KERNEL).format_kernel_cmd()
    except NoSuchKernel:
        pytest.fail(f"no {KERNEL!r} kernelspec; install ipykernel in this environment "
                    f"({sys.executable} -m pip install -e '.[test]')")
    if Path(cmd[0]).resolve() != Path(sys.executable).resolve():
        pytest.fail(f"the {KERNEL!r} kernelspec runs {cmd[0]}, not {sys.executable}; run "
                    f"`jupyter kernelspec list` and remove or fix the stale spec, or set "
                    f"JUPYTER_PREFER_ENV_PATH=1")


def _execute(path: Path, cwd: Path):
    nb = _read(path)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    return nb


def _stream(nb, name: str = "stdout") -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs
                   if out.output_type == "stream" and out.name == name)


def _n_images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for out in cell.outputs)


def _markdown(nb) -> list[str]:
    return [out["data"]["text/markdown"] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if "text/markdown" in out.get("data", {})]


# ------------------------------------------------------------------ per-notebook inputs
# Each makes the notebook's input files under ``folder`` (not the kernel's working folder),
# points the notebook's environment variable at them and returns keyword arguments for the
# notebook's expectations.


def _inputs_predict(folder: Path, monkeypatch) -> dict:
    """A random-initialised tiny checkpoint (the smoke model) that says it was trained at
    64 px: the notebook's pictures are noise, but every step runs as for a trained one."""
    config = smoke_model()
    torch.manual_seed(0)
    path = save_checkpoint(folder / "tiny" / "best.pt", model=CrossModalNet(config).eval(),
                           config={"name": "tiny", "model": config.to_dict(),
                                   "data": {"image_size": 64}})
    monkeypatch.setenv("CROSSMODAL_CHECKPOINT", str(path))
    return {"checkpoint": path}


#: (run directory, experiment, variant, mean, median, % below 20/25/30): made-up results of
#: an ablation; the plain U-Net is best in every column but the median, no_skips there.
ABLATION_RUNS = [
    ("quickstart", "quickstart", "full", 16.86, 13.59, (71.5, 81.6, 87.9)),
    ("quickstart_no_skips", "quickstart_no_skips", "no_skips", 18.21, 12.9, (66.0, 77.3, 84.5)),
    ("plain", None, "plain_unet", 15.69, 14.65, (75.44, 84.54, 90.02)),
]


def _inputs_ablations(folder: Path, monkeypatch) -> dict:
    """Three run directories holding eval.json as ``crossmodal eval`` writes it (one without
    an experiment name, labelled by its directory), and the table ``crossmodal report``
    prints for them."""
    runs = []
    for run, experiment, variant, mean, median, below in ABLATION_RUNS:
        result = {"n_images": 120, "n_pixels": 250_000, "mean": mean, "std": 2.5,
                  "median": median, "pixel_mean": mean - 0.4,
                  "below": dict(zip(("20", "25", "30"), below)),
                  "dataset": "synth_quickstart", "split": "test",
                  "checkpoint": f"runs/{run}/best.pt", "experiment": experiment,
                  "variant": variant, "image_size": 64, "model_image_size": 64,
                  "n_excluded_pred": 0, "n_empty_images": 0}
        (folder / "runs" / run).mkdir(parents=True)
        (folder / "runs" / run / "eval.json").write_text(metrics_json(result))
        runs.append(folder / "runs" / run)
    table = folder / "table.md"
    assert main(["-q", "report", *map(str, sorted(runs)), "--out", str(table)]) == 0
    monkeypatch.setenv("CROSSMODAL_RESULTS", str(folder / "runs" / "*"))
    return {"runs": sorted(runs), "table": table.read_text(encoding="utf-8")}


INPUTS = {"predict.ipynb": _inputs_predict, "ablations.ipynb": _inputs_ablations}
#: The variable each notebook with inputs reads, and what its error says when they are missing.
MISSING_INPUTS = {"predict.ipynb": ("CROSSMODAL_CHECKPOINT", "no checkpoint at"),
                  "ablations.ipynb": ("CROSSMODAL_RESULTS", "no eval results match")}


# ------------------------------------------------------------ per-notebook expectations


def _expect_normal_maps(nb) -> None:
    text = _stream(nb)
    assert _stream(nb, "stderr") == "", "the tutorial should run without warnings"
    # Section 1: the convention on the sphere, exact at its centre, top and right.
    assert "centre: n = [0. 0. 1.]  rgb = [0.5 0.5 1. ]" in text
    assert re.search(r"right: n = \[0\.775 0\. +0\.632\]", text)
    assert re.search(r"top: n = \[0\. +0\.775 0\.632\]", text)
    # Section 2: conversions and the Datagen trap.
    assert "opencv -> opengl round trip exact: True" in text
    assert "datagen RGB == our RGB: True" in text
    assert "datagen [ 0.  0. -1.]" in text
    assert "{'normalConvention': 'datagen', 'normalEncoding': 'rgb'}" in text
    # Both EXR files read back to the original: zero angular error, same mask.
    reads = re.findall(r"read back (\S+).*: mask equal (\w+)\n(\{.*\})", text)
    assert [name for name, _, _ in reads] == ["sphere.exr", "sphere_datagen.exr"]
    for name, same_mask, summary in reads:
        summary = ast.literal_eval(summary)
        assert same_mask == "True", name
        assert summary["mean"] == 0.0 and summary["median"] == 0.0, (name, summary)
        assert summary["n_images"] == 1 and summary["n_pixels"] > 8000, (name, summary)
    # Section 3: Sobel normals of the face relief within a fraction of a degree, then the
    # streaming meter over three images.
    summaries = [ast.literal_eval(s) for s in re.findall(r"^(\{'n_images'.*\})$", text, re.M)]
    assert len(summaries) == 4, summaries
    single, meter = summaries[2], summaries[3]
    assert single["n_images"] == 1 and 0.0 < single["mean"] < 0.5, single
    assert single["below"] == {"20": 100.0, "25": 100.0, "30": 100.0}
    assert meter["n_images"] == 3 and meter["std"] > 0.0, meter
    # Section 4: integration error, Poisson more accurate than Frankot-Chellappa.
    rms = {m: float(v) for m, v in re.findall(r"(\w+): RMS error ([\d.]+)%", text)}
    assert set(rms) == {"poisson", "fc"}, rms
    assert rms["poisson"] < 0.5 and rms["poisson"] < rms["fc"] < 1.0, rms
    # Section 5: a mesh with two triangles per 2x2 block, written as OBJ and PLY.
    vertices, triangles = map(int, re.search(r"(\d+) vertices, (\d+) triangles", text).groups())
    assert 20000 < vertices < triangles < 2 * vertices
    assert "relief.obj:" in text and "relief.ply:" in text
    assert "# crossmodal relief mesh" in text
    # sphere, conventions, face normals, depth, relit views
    assert _n_images(nb) == 5


def _expect_predict(nb, checkpoint: Path) -> None:
    text = _stream(nb)
    assert _stream(nb, "stderr") == "", "the notebook should run without warnings"
    # The kernel read the checkpoint that the test passed through the environment.
    assert f"checkpoint: {checkpoint}\n" in text
    assert "network runs at 64 px on cpu, crops of 256 px; output convention 'opengl'" in text
    # One face in each bundled photo, cropped by the protocol: 1.2x the landmarks' span.
    counts = {name: int(n) for name, n in re.findall(r"^(\w+): \d+x\d+ photo, (\d+) faces?$",
                                                     text, re.M)}
    assert counts == {name: 1 for name in BUNDLED_PHOTOS}, counts
    faces = re.findall(r"landmarks span (\d+) px, crop square (\d+) px at .*, detector score "
                       r"([\d.]+), mask (\d+)% of the crop", text)
    assert len(faces) == 2, faces
    for span, side, score, mask in faces:
        assert abs(int(side) - 1.2 * int(span)) <= 1.5 and float(score) > 0.0
        assert 30 < int(mask) < 80
    # A relief mesh of one vertex per mask pixel and about two triangles each.
    vertices, triangles = map(int, re.search(r"mesh of (\d+) vertices, (\d+) triangles",
                                             text).groups())
    assert 10_000 < vertices < triangles < 2 * vertices
    assert re.search(r"astronaut_face0\.ply: [1-9][\d.]* MB", text), text
    # a figure per face, the paste-back, depth and relief
    assert _n_images(nb) == 2 + 1 + 1


def _expect_ablations(nb, runs: list[Path], table: str) -> None:
    text = _stream(nb)
    assert _stream(nb, "stderr") == "", "the notebook should run without warnings"
    # Every run found through the glob of run directories, labelled as crossmodal report does.
    labels = {"plain": "plain (plain_unet)", "quickstart": "quickstart (full)",
              "quickstart_no_skips": "quickstart_no_skips (no_skips)"}
    listed = re.findall(r"^(.*): (\S+) \(120 images of synth_quickstart/test\)$", text, re.M)
    assert listed == [(labels[run.name], str(run)) for run in runs], listed
    # Exactly the table that crossmodal report prints, shown once as markdown.
    assert _markdown(nb) == [table]
    for label in labels.values():
        assert f"| {label} |" in table
    assert "**15.69 ± 2.50**" in table and "**12.90**" in table  # the best of two columns
    # the error and threshold charts, one figure
    assert _n_images(nb) == 1


EXPECTATIONS = {"normal_maps.ipynb": _expect_normal_maps, "predict.ipynb": _expect_predict,
                "ablations.ipynb": _expect_ablations}


# ------------------------------------------------------------------------------ tests


def test_notebooks_are_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    for table in (EXPECTATIONS, INPUTS, MISSING_INPUTS):
        missing = set(table) - {p.name for p in NOTEBOOKS}
        assert not missing, f"expectations or inputs for missing notebooks: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} carry outputs or execution counts; "
                       f"clear them before committing (jupyter nbconvert --clear-output "
                       f"--inplace {path.relative_to(NOTEBOOK_DIR.parent)})")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    _check_kernel_is_this_interpreter()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    made = INPUTS[path.name](inputs, monkeypatch) if path.name in INPUTS else {}
    before = sorted(inputs.rglob("*"))
    nb = _execute(path, cwd)
    leftovers = sorted(p.name for p in cwd.iterdir())
    assert not leftovers, f"{path.name} wrote {leftovers} into its working folder"
    assert sorted(inputs.rglob("*")) == before, f"{path.name} wrote beside its inputs"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    assert not any(out.output_type == "error" for c in code_cells for out in c.outputs)
    check = EXPECTATIONS.get(path.name)
    if check is not None:
        check(nb, **made)


@pytest.mark.parametrize("name", sorted(MISSING_INPUTS))
def test_notebook_without_its_inputs_names_the_fix(name, tmp_path, monkeypatch):
    """Run where its inputs are missing, a notebook stops in its first code cell with an
    error that says how to make them or where to point it."""
    _check_kernel_is_this_interpreter()
    variable, error = MISSING_INPUTS[name]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(variable, str(tmp_path / "nothing" / "here"))
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failed:
        _execute(NOTEBOOK_DIR / name, cwd)
    message = str(failed.value)
    assert "FileNotFoundError" in message and error in message, message
    assert str(tmp_path / "nothing" / "here") in message
    assert "make demo" in message and variable in message
    assert not any(cwd.iterdir())
