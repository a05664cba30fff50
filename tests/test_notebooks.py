"""Every notebook in ``notebooks/`` runs top to bottom and prints what it claims.

Each notebook is executed with nbclient on the ``python3`` kernel of the interpreter running
pytest: ipykernel installs its kernelspec under ``sys.prefix/share/jupyter/kernels`` and
jupyter_client finds it there (or falls back to ipykernel's built-in spec), replacing the
spec's bare ``python`` with ``sys.executable``, so nothing is installed at test time. The
kernel runs in an empty temporary folder, which must still be empty afterwards: notebooks
write only to their own temporary directories, never into the repository.

The stored notebooks must carry no outputs, so the repository stays small and diffs stay
readable (execute them locally, then clear outputs before committing).
"""

import ast
import re
import sys
from pathlib import Path

import pytest

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


EXPECTATIONS = {"normal_maps.ipynb": _expect_normal_maps}


# ------------------------------------------------------------------------------ tests


def test_notebooks_are_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    missing = set(EXPECTATIONS) - {p.name for p in NOTEBOOKS}
    assert not missing, f"expectations for missing notebooks: {missing}"


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
    nb = _execute(path, cwd)
    leftovers = sorted(p.name for p in cwd.iterdir())
    assert not leftovers, f"{path.name} wrote {leftovers} into its working folder"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    assert not any(out.output_type == "error" for c in code_cells for out in c.outputs)
    check = EXPECTATIONS.get(path.name)
    if check is not None:
        check(nb)
