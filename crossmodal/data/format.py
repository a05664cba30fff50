"""The on-disk dataset format (docs/design.md §3): every producer writes it, every consumer
reads it.

::

    DATASET/
      dataset.json   {"name", "source", "license", "convention": "opengl",
                      "image_size", "crop": "landmarks-1.2" | ..., "created_by"}
      samples.csv    id,subject,split,image,normal,mask  (paths relative to DATASET; empty = absent)
      images/ID.png  RGB uint8
      normals/ID.exr float32 R, G, B = (x, y, z), our convention (+x right, +y up, +z to camera)
      masks/ID.png   uint8 0/255 facial region

A row with an image and a normal map is *paired*, with an image only *image*, with a
normal map only *normal*. Splits are ``train``/``val``/``test`` and subject-disjoint.

:class:`DatasetWriter` writes the format resumably: a crash loses at most the samples
added since the last flush of ``samples.csv``. :func:`read_dataset` reads it and rejects,
with the line and id to fix, every row a consumer should not trust.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import MISSING, asdict, dataclass, fields
from io import StringIO
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType

import numpy as np

from .. import io
from ..errors import CrossmodalError, InputError
from ..fileutil import atomic_write, read_text, remove_temporaries, require_file
from ..normals import check_normals
from ..provenance import settings_changes

__all__ = [
    "claim_folder",
    "COLUMNS",
    "INFO_FILE",
    "KINDS",
    "KIND_ENTRIES",
    "SAMPLES_FILE",
    "SPLITS",
    "DatasetInfo",
    "DatasetWriter",
    "Sample",
    "read_dataset",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
KINDS = ("paired", "image", "normal")
#: The maps a sample of each kind carries (its mask always): a batch entry a pass can read
#: or a loss can compare with.
KIND_ENTRIES = {"paired": ("image", "normals"), "image": ("image",), "normal": ("normals",)}
COLUMNS = ("id", "subject", "split", "image", "normal", "mask")
INFO_FILE = "dataset.json"
SAMPLES_FILE = "samples.csv"
#: The one convention normal maps are stored in (docs/design.md §2, §3).
CONVENTION = "opengl"

# Ids become file names: no separators, no leading dot (hidden / temporary files).
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The media columns, the sub-folder the writer puts each in, and its suffix.
_MEDIA = (("image", "images", ".png"), ("normal", "normals", ".exr"), ("mask", "masks", ".png"))

PathLike = str | os.PathLike


@dataclass(kw_only=True)
class DatasetInfo:
    """``dataset.json``: what the dataset is and how it was made.

    Attributes:
        name: short name, e.g. ``"synthetic-ict"``.
        source: where the data comes from (a recipe, a URL, a generator and its seed).
        license: licence of the data, e.g. ``"MIT"`` or ``"research only"``.
        convention: the normal-map convention; always ``"opengl"`` (ours) in this format.
        image_size: side in pixels of every (square) image, normal map and mask.
        crop: the crop protocol the images went through (docs/design.md §4).
        created_by: the program (and version) that wrote the dataset.
    """

    name: str
    source: str
    license: str
    convention: str = CONVENTION
    image_size: int
    crop: str = "landmarks-1.2"
    created_by: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "image_size":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise InputError(f"dataset image_size must be a positive integer, got "
                                     f"{value!r}")
            elif not isinstance(value, str):
                raise InputError(f"dataset {f.name} must be a string, got {value!r}")
        if self.convention != CONVENTION:
            raise InputError(f"dataset convention {self.convention!r} is not supported: the "
                             f"format stores normals in the {CONVENTION!r} convention; convert "
                             f"them (crossmodal convert) and set \"convention\": "
                             f"\"{CONVENTION}\"")

    def to_json(self) -> str:
        """The ``dataset.json`` text (keys in docs/design.md order, trailing newline)."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = INFO_FILE) -> DatasetInfo:
        """Parse ``dataset.json`` text; ``source`` names the file in error messages.

        Keys this version does not know are ignored, so newer writers can add fields.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{source}: invalid JSON ({err}); fix or rewrite it") from None
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise InputError(f"{source}: missing key(s) {', '.join(missing)}; add them "
                             f"(docs/design.md §3)")
        try:
            return cls(**{k: data[k] for k in names if k in data})
        except InputError as err:
            raise InputError(f"{source}: {err}") from None


@dataclass(frozen=True)
class Sample:
    """One row of ``samples.csv``.

    Paths are the dataset folder joined with the row's relative path (``None`` = absent),
    so they open as they are.
    """

    id: str
    subject: str
    split: str
    image: Path | None = None
    normal: Path | None = None
    mask: Path | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise InputError("empty sample id; give every row a unique id")
        if not self.subject:
            raise InputError(f"sample {self.id!r} has no subject; splits are checked to be "
                             f"subject-disjoint, so every row needs one")
        if self.split not in SPLITS:
            raise InputError(f"sample {self.id!r} has unknown split {self.split!r}; use one of "
                             f"{', '.join(SPLITS)}")
        if self.image is None and self.normal is None:
            raise InputError(f"sample {self.id!r} has neither an image nor a normal map; every "
                             f"row needs at least one")

    @property
    def kind(self) -> str:
        """'paired' (image and normals), 'image' (image only) or 'normal' (normals only)."""
        if self.image is not None and self.normal is not None:
            return "paired"
        return "image" if self.image is not None else "normal"


# --------------------------------------------------------------------------- reading


def _read_info(root: Path) -> DatasetInfo:
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist or is not a folder; check the "
                         f"path")
    path = root / INFO_FILE
    if not os.path.lexists(path):
        raise InputError(f"{root} is not a dataset folder: {INFO_FILE} is missing; point to a "
                         f"folder written by crossmodal synth/prepare (docs/design.md §3)")
    return DatasetInfo.from_json(read_text(path, "dataset description"), str(path))


def _real_folder(folder: Path) -> str:
    """``folder`` with every link resolved, ending in the separator."""
    return os.path.join(os.path.realpath(folder), "")


def _row_path(text: str, root: Path, where: str, column: str,
              real_folders: dict[str, str]) -> Path | None:
    """A ``samples.csv`` path cell -> ``root / path``; refuse paths leaving the folder,
    whether by their spelling or through a symbolic link.

    ``real_folders``: a folder of the cells (as spelled) -> its path with links resolved
    and a trailing separator, holding the root's ('') at least; filled here, so that each
    folder is resolved once and a file only when it is a link itself.
    """
    if not text:
        return None
    posix = text.replace("\\", "/")
    pure = PurePosixPath(posix)
    if pure.is_absolute() or PureWindowsPath(text).drive or ".." in pure.parts:
        raise InputError(f"{where}: {column} path {text!r} leaves the dataset folder; paths "
                         f"must be relative to {root} without '..' (e.g. images/ID.png)")
    path = root / pure
    # A link (the file, or a folder on its way) may lead into another dataset, whose file a
    # writer resuming here would then overwrite, or anywhere else on the disk.
    folder, _, name = posix.rpartition("/")
    if folder not in real_folders:
        real_folders[folder] = _real_folder(root / folder)
    real = (os.path.realpath(path) if os.path.islink(path)
            else real_folders[folder] + name)
    if not (real + os.sep).startswith(real_folders[""]):
        raise InputError(f"{where}: {column} path {text!r} leads outside the dataset folder "
                         f"through a symbolic link (to {real}); copy the file into {root} "
                         f"instead of linking it")
    return path


def _read_rows(root: Path, *, check_files: bool) -> list[tuple[int, Sample]]:
    """``(line number, Sample)`` for every row of ``root/samples.csv``."""
    path = root / SAMPLES_FILE
    if not os.path.lexists(path):
        raise InputError(f"{root} is not a complete dataset folder: {SAMPLES_FILE} is missing; "
                         f"re-run the producer (it resumes) to write it")
    # newline="": the csv module reads the line endings itself (quoted fields may hold them).
    reader = csv.DictReader(StringIO(read_text(path, "dataset table"), newline=""))
    real_folders = {"": _real_folder(root)}
    rows: list[tuple[int, Sample]] = []
    first_line: dict[str, int] = {}
    try:
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        unknown = [c for c in header if c not in COLUMNS]
        if missing or unknown:
            raise InputError(f"{path}: header must be {','.join(COLUMNS)}; missing "
                             f"{missing or 'none'}, unknown {unknown or 'none'}")
        for row in reader:
            line = reader.line_num
            ident = (row.get("id") or "").strip()
            where = f"{path} line {line} (id {ident!r})"
            if None in row or any(row[c] is None for c in COLUMNS):
                raise InputError(f"{where}: expected {len(COLUMNS)} fields "
                                 f"({','.join(COLUMNS)}); fix the row")
            if ident in first_line:
                raise InputError(f"{where}: duplicate id, already on line {first_line[ident]}; "
                                 f"ids must be unique")
            paths = {c: _row_path(row[c].strip(), root, where, c, real_folders)
                     for c, _, _ in _MEDIA}
            try:
                sample = Sample(ident, row["subject"].strip(), row["split"].strip(), **paths)
                if check_files:
                    for column, file in paths.items():
                        if file is not None:
                            require_file(file, f"{column} file",
                                         "restore it, re-run the producer or drop the row")
            except InputError as err:
                raise InputError(f"{where}: {err}") from None
            first_line[ident] = line
            rows.append((line, sample))
    except csv.Error as err:  # e.g. an unclosed quote making the rest one over-long field
        # line_num counts the lines csv has finished; it failed on the next one.
        raise InputError(f"{path} line {reader.line_num + 1}: {err}; fix the row "
                         f"({SAMPLES_FILE} is comma-separated UTF-8 text)") from None
    return rows


def _check_subjects(rows: list[tuple[int, Sample]], csv_path: Path) -> None:
    """Splits must be subject-disjoint: a subject in two splits leaks test faces."""
    seen: dict[str, tuple[int, Sample]] = {}
    for line, sample in rows:
        first = seen.setdefault(sample.subject, (line, sample))
        if first[1].split != sample.split:
            raise InputError(
                f"{csv_path}: subject {sample.subject!r} is in split {first[1].split!r} "
                f"(line {first[0]}, id {first[1].id!r}) and {sample.split!r} (line {line}, "
                f"id {sample.id!r}); splits must be subject-disjoint: put all of the subject's "
                f"samples in one split")


def read_dataset(root: PathLike, *, check_files: bool = True) -> tuple[DatasetInfo, list[Sample]]:
    """Read and validate a dataset folder.

    Args:
        check_files: also require every referenced file to exist (off: only the tables).

    Returns:
        ``(info, samples)`` in the order of ``samples.csv``.

    Raises:
        InputError: no ``dataset.json`` / ``samples.csv``, bad header, and per row (naming
            its line and id): empty id, duplicate id, unknown split, no subject, a row
            with neither image nor normals, a path leaving the folder (absolute or with
            ``..``, or through a symbolic link), a missing file or one that is not a
            regular file; a subject in two splits; tables that are not UTF-8 text or that
            cannot be read.
    """
    root = Path(root)
    info = _read_info(root)
    rows = _read_rows(root, check_files=check_files)
    _check_subjects(rows, root / SAMPLES_FILE)
    return info, [sample for _, sample in rows]


# --------------------------------------------------------------------------- writing


class DatasetWriter:
    """Write a dataset folder sample by sample, resumably.

    ``samples.csv`` is rewritten atomically every ``flush_every`` adds and on
    :meth:`close`, and a row is recorded only after its files are written, so a crash
    loses at most the samples added since the last flush. Re-opening a partial folder
    removes the temporary files of interrupted writes and keeps the rows whose files all
    decode at the dataset's size (:meth:`existing_ids`: skip those); the files of lost or
    damaged rows are overwritten when their sample is added again.

    Use as a context manager, or call :meth:`close`; leaving the ``with`` block on an
    exception still saves the finished rows.
    """

    def __init__(self, root: PathLike, info: DatasetInfo, *, flush_every: int = 50) -> None:
        self.root = Path(root)
        self.info = info
        self.flush_every = max(1, int(flush_every))
        self._samples: dict[str, Sample] = {}
        self._subject_split: dict[str, str] = {}
        self._unflushed = 0
        self._closed = False
        for folder in (self.root, *(self.root / name for _, name, _ in _MEDIA)):
            removed = remove_temporaries(folder)
            if removed:
                log.info("%s: removed %d temporary files left by an interrupted write",
                         folder, len(removed))
        if (self.root / INFO_FILE).is_file():
            self._check_same_dataset(_read_info(self.root))
        if (self.root / SAMPLES_FILE).is_file():
            rows = _read_rows(self.root, check_files=False)
            _check_subjects(rows, self.root / SAMPLES_FILE)
            for _, sample in rows:
                if self._intact(sample):
                    self._record(sample)
        atomic_write(self.root / INFO_FILE,
                     lambda tmp: tmp.write_text(info.to_json(), encoding="utf-8"))

    def _check_same_dataset(self, old: DatasetInfo) -> None:
        # created_by may name another version of the same producer; anything else that
        # differs would mix two datasets in one folder.
        new = asdict(self.info)
        diff = [k for k, v in asdict(old).items() if k != "created_by" and new[k] != v]
        if diff:
            raise InputError(f"{self.root} holds another dataset ({', '.join(diff)} differ: "
                             f"{', '.join(f'{k}={asdict(old)[k]!r}' for k in diff)}); write "
                             f"to an empty folder or delete it")

    def _intact(self, sample: Sample) -> bool:
        """Whether every file of a resumed row decodes at the dataset's size; one cut short
        by a killed run, or damaged since, is written again when its sample is re-added
        rather than counted as done. Cheap next to producing a sample (measured on synth's
        64 px faces: 1.4 ms a row, against 50 ms to render one)."""
        side = self.info.image_size
        try:
            if sample.image is not None and io.read_image(sample.image).shape[:2] != (side,) * 2:
                raise InputError(f"{sample.image} is not {side}x{side}")
            if sample.normal is not None:
                io.read_normals(sample.normal, mask=np.ones((side, side), bool))
            if sample.mask is not None:
                io.read_mask(sample.mask, (side, side))
        except InputError as err:
            log.warning("%s: sample %s is written again: %s", self.root, sample.id, err)
            return False
        return True

    def _record(self, sample: Sample) -> None:
        self._samples[sample.id] = sample
        self._subject_split.setdefault(sample.subject, sample.split)

    def existing_ids(self) -> frozenset[str]:
        """Ids of the samples already complete in the folder (resumed or added)."""
        return frozenset(self._samples)

    @property
    def samples(self) -> list[Sample]:
        """The recorded samples, sorted by id."""
        return [self._samples[k] for k in sorted(self._samples)]

    def add(
        self,
        id: str,
        subject: str,
        split: str,
        image: np.ndarray | None = None,
        normals: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> Sample:
        """Write one sample's files and record its row.

        Args:
            id: unique, used as the file name: letters, digits, ``.``, ``_``, ``-``, not
                starting with ``.``.
            image: RGB ``(S, S, 3)``, float in [0, 1] or uint8 (S = ``info.image_size``);
                written as ``images/ID.png``.
            normals: ``(S, S, 3)`` unit vectors in our convention, zero where invalid;
                written as ``normals/ID.exr`` (float32, convention recorded).
            mask: ``(S, S)`` bool (or 0/1, 0/255) facial region; ``masks/ID.png``.

        Returns:
            The recorded :class:`Sample`.

        Raises:
            InputError: invalid or duplicate id, unknown split, neither image nor
                normals, a subject already in another split, arrays of the wrong shape,
                non-unit normals; or the writer is closed.
        """
        if self._closed:
            raise InputError(f"DatasetWriter for {self.root} is closed; open a new one to add "
                             f"samples")
        if not isinstance(id, str) or not _ID_PATTERN.fullmatch(id):
            raise InputError(f"sample id {id!r} cannot be a file name; use letters, digits, "
                             f"'.', '_' and '-', not starting with '.'")
        if id in self._samples:
            raise InputError(f"sample {id!r} is already in {self.root}; ids must be unique "
                             f"(skip existing_ids() when resuming)")
        arrays = {"image": image, "normal": normals, "mask": mask}
        sample = Sample(id, subject, split, **{
            column: None if arrays[column] is None else self.root / folder / f"{id}{suffix}"
            for column, folder, suffix in _MEDIA})
        other = self._subject_split.get(subject, split)
        if other != split:
            raise InputError(f"subject {subject!r} of sample {id!r} is already in split "
                             f"{other!r}, not {split!r}; splits must be subject-disjoint")
        self._check_arrays(id, image, normals, mask)

        if image is not None:
            io.write_image(sample.image, image)
        if normals is not None:
            io.write_normals(sample.normal, normals, convention=CONVENTION)
        if mask is not None:
            io.write_mask(sample.mask, mask)
        self._record(sample)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()
        return sample

    def _check_arrays(self, id: str, image: np.ndarray | None, normals: np.ndarray | None,
                      mask: np.ndarray | None) -> None:
        s = self.info.image_size
        expected = {"image": (s, s, 3), "normals": (s, s, 3), "mask": (s, s)}
        for name, array in (("image", image), ("normals", normals), ("mask", mask)):
            if array is not None and np.shape(array) != expected[name]:
                raise InputError(f"sample {id!r}: {name} has shape {np.shape(array)}, expected "
                                 f"{expected[name]} (image_size {s}); crop it to the "
                                 f"dataset's size")
        if normals is not None:
            check_normals(np.asarray(normals), source=f"normals of sample {id!r}")

    def flush(self) -> None:
        """Atomically rewrite ``samples.csv`` (sorted by id) with every recorded row."""
        buffer = StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for sample in self.samples:
            paths = [getattr(sample, column) for column, _, _ in _MEDIA]
            writer.writerow([sample.id, sample.subject, sample.split] + [
                "" if p is None else p.relative_to(self.root).as_posix() for p in paths])
        atomic_write(self.root / SAMPLES_FILE,
                     lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
        self._unflushed = 0

    def close(self) -> None:
        """Write ``samples.csv`` and ``dataset.json``; further adds are refused."""
        if self._closed:
            return
        self.flush()
        atomic_write(self.root / INFO_FILE,
                     lambda tmp: tmp.write_text(self.info.to_json(), encoding="utf-8"))
        self._closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def claim_folder(out: PathLike, record: dict, *, record_file: str, producer: str,
                 names: dict[str, str] | None = None, introduced: dict | None = None) -> None:
    """Record how a producer (``synth``, a ``prepare`` recipe) fills the dataset folder
    ``out`` -- ``record``, its options, as JSON in ``out/record_file`` -- or check that a
    re-run's options match the ones recorded, so that it completes the same dataset rather
    than mixing two in one folder.

    Refused before anything is written: a folder holding a dataset the producer did not
    write (``dataset.json`` without ``record_file``: producers write the record first), and
    one made with other options that holds finished rows (the message names each changed
    option, by ``names`` where given). A folder without a finished row (a run stopped
    before its first was saved, say with a wrong option) starts afresh with the new record.

    ``introduced`` (nested like ``record``) gives options added to the producer after
    folders were made: the value that reproduces what it did before. An older record
    without such an option is read as having that value, so a folder made before an
    option existed is still completed when the option is left at it.

    Raises:
        CrossmodalError: naming the folder and the fix.
    """
    out = Path(out)
    record = json.loads(json.dumps(record))  # as it reads back: lists, not tuples
    path = out / record_file
    if path.is_file():
        try:
            old = json.loads(read_text(path, f"{producer} options"))
        except json.JSONDecodeError as err:
            raise CrossmodalError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}); "
                                  f"delete the folder {out} or choose a new --out") from None
        if isinstance(old, dict) and introduced:
            old = _with_introduced(old, json.loads(json.dumps(introduced)))
        if old == record:
            return
        changes = (", ".join(settings_changes(old, record, names)) if isinstance(old, dict)
                   else f"not {producer} options")
        if _finished_rows(out):
            raise CrossmodalError(
                f"{out} was made by {producer} with other options ({path}: {changes}); "
                f"re-run with the same options to complete it, delete the folder, or "
                f"choose a new --out")
        log.info("%s: no sample was finished with its earlier options (%s); starting afresh",
                 out, changes)
        for name in (INFO_FILE, SAMPLES_FILE):
            (out / name).unlink(missing_ok=True)
    elif (out / INFO_FILE).exists():
        raise CrossmodalError(f"--out {out} holds a dataset not written by {producer} "
                              f"({INFO_FILE} without {record_file}); choose a new --out")
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def _with_introduced(old: dict, introduced: dict) -> dict:
    """``old`` with the keys of ``introduced`` it lacks filled in, level by level."""
    merged = dict(old)
    for key, value in introduced.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_introduced(merged[key], value)
    return merged


def _finished_rows(out: Path) -> int:
    path = out / SAMPLES_FILE
    if not path.is_file():
        return 0
    lines = [line for line in read_text(path, "sample list").splitlines() if line.strip()]
    return max(0, len(lines) - 1)  # less the header
