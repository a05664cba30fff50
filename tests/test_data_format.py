"""Tests of crossmodal.data.format (docs/design.md §3) and crossmodal.data.dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from crossmodal import io
from crossmodal.data import (
    KINDS,
    DatasetInfo,
    DatasetWriter,
    FaceNormalsDataset,
    Sample,
    read_dataset,
)
from crossmodal.errors import InputError
from crossmodal.shapes import orthographic_sphere

SIZE = 16


def make_info(**overrides):
    values = dict(name="tiny", source="tests", license="MIT", image_size=SIZE,
                  created_by="test_data_format")
    return DatasetInfo(**{**values, **overrides})


def content(seed):
    """A random uint8 image, the sphere's normals and a mask (the sphere's disc)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    sphere = orthographic_sphere(SIZE, radius=6 + seed % 2)
    return image, sphere.normals, sphere.mask


# id, subject, split, which modalities: paired, image-only and normal-only rows, two
# subjects per split.
ROWS = [
    ("a0", "s1", "train", "inm"), ("a1", "s1", "train", "in"), ("a2", "s2", "train", "i"),
    ("a3", "s2", "train", "n"), ("a4", "s2", "train", "im"),
    ("b0", "s3", "val", "inm"), ("b1", "s4", "val", "n"),
    ("c0", "s5", "test", "inm"), ("c1", "s6", "test", "i"),
]


def add_row(writer, ident, subject, split, which, seed):
    image, normals, mask = content(seed)
    return writer.add(ident, subject, split,
                      image=image if "i" in which else None,
                      normals=normals if "n" in which else None,
                      mask=mask if "m" in which else None)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root, make_info()) as writer:
        # Added out of order: samples.csv is sorted by id.
        for seed, row in reversed(list(enumerate(ROWS))):
            add_row(writer, *row, seed)
    return root


def edit_csv(root, line, old, new):
    """Replace ``old`` by ``new`` on (1-based) ``line`` of samples.csv."""
    path = root / "samples.csv"
    lines = path.read_text().splitlines()
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- round trip


def test_written_dataset_reads_back(dataset):
    info, samples = read_dataset(dataset)
    assert info == make_info()
    assert json.loads((dataset / "dataset.json").read_text()) == {
        "name": "tiny", "source": "tests", "license": "MIT", "convention": "opengl",
        "image_size": SIZE, "crop": "landmarks-1.2", "created_by": "test_data_format"}
    lines = (dataset / "samples.csv").read_text().splitlines()
    assert lines[0] == "id,subject,split,image,normal,mask"
    assert lines[1] == "a0,s1,train,images/a0.png,normals/a0.exr,masks/a0.png"
    assert lines[3] == "a2,s2,train,images/a2.png,,"
    assert lines[4] == "a3,s2,train,,normals/a3.exr,"
    assert [s.id for s in samples] == sorted(r[0] for r in ROWS)
    kinds = {s.id: s.kind for s in samples}
    assert kinds == {"a0": "paired", "a1": "paired", "a2": "image", "a3": "normal",
                     "a4": "image", "b0": "paired", "b1": "normal", "c0": "paired",
                     "c1": "image"}
    by_id = {s.id: s for s in samples}
    for seed, (ident, subject, split, which) in enumerate(ROWS):
        sample = by_id[ident]
        assert (sample.subject, sample.split) == (subject, split)
        image, normals, mask = content(seed)
        if "i" in which:
            np.testing.assert_array_equal(io.read_image(sample.image), image / np.float32(255))
        if "n" in which:
            read, valid = io.read_normals(sample.normal)
            assert read.dtype == np.float32 and np.array_equal(read, normals)  # bit-exact
            np.testing.assert_array_equal(valid, np.any(normals != 0, axis=-1))
        if "m" in which:
            np.testing.assert_array_equal(io.read_mask(sample.mask), mask)
        else:
            assert sample.mask is None


def test_info_json_round_trip_and_errors(tmp_path):
    info = make_info(crop="landmarks-1.3")
    assert DatasetInfo.from_json(info.to_json()) == info
    extra = json.loads(info.to_json()) | {"future_key": 1}  # newer writers may add keys
    assert DatasetInfo.from_json(json.dumps(extra)) == info
    with pytest.raises(InputError, match="missing key.*image_size"):
        DatasetInfo.from_json('{"name": "x", "source": "", "license": "", "created_by": ""}')
    with pytest.raises(InputError, match="convention"):
        make_info(convention="opencv")
    with pytest.raises(InputError, match="image_size"):
        make_info(image_size=0)
    with pytest.raises(InputError, match="invalid JSON"):
        DatasetInfo.from_json("{", "somewhere/dataset.json")


def test_sample_kind():
    assert Sample("x", "s", "train", image="i.png").kind == "image"
    assert Sample("x", "s", "train", normal="n.exr").kind == "normal"
    assert Sample("x", "s", "train", image="i.png", normal="n.exr").kind == "paired"
    with pytest.raises(InputError, match="neither an image nor a normal"):
        Sample("x", "s", "train", mask="m.png")


# --------------------------------------------------------------------------- resuming


def test_resume_after_close_and_after_a_crash(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root, make_info()) as writer:
        for seed, row in enumerate(ROWS[:4]):
            add_row(writer, *row, seed)
    writer = DatasetWriter(root, make_info())
    assert writer.existing_ids() == {"a0", "a1", "a2", "a3"}
    with pytest.raises(InputError, match="already in"):
        add_row(writer, *ROWS[0], 0)

    # A crash: flushed every 2 adds, so of 3 new samples 2 rows survive; the third's
    # files exist without a row.
    writer.flush_every = 2
    for seed, row in enumerate(ROWS[4:7], start=4):
        add_row(writer, *row, seed)
    del writer  # no close()
    assert (root / "images" / "b1.png").exists() is False  # b1 is normal-only
    assert (root / "normals" / "b1.exr").exists()
    # A row whose file went missing is not done either.
    (root / "images" / "a2.png").unlink()

    writer = DatasetWriter(root, make_info(created_by="another version"))
    assert writer.existing_ids() == {"a0", "a1", "a3", "a4", "b0"}
    for seed, row in enumerate(ROWS):
        if row[0] not in writer.existing_ids():
            add_row(writer, *row, seed)  # leftover b1 files are overwritten
    writer.close()
    info, samples = read_dataset(root)
    assert [s.id for s in samples] == sorted(r[0] for r in ROWS)
    assert info.created_by == "another version"
    with pytest.raises(InputError, match="closed"):
        add_row(writer, "z9", "s9", "test", "i", 0)


def test_reopening_with_another_dataset_is_refused(dataset):
    with pytest.raises(InputError, match="another dataset.*image_size"):
        DatasetWriter(dataset, make_info(image_size=32))


def test_writer_rejects_bad_samples(tmp_path):
    image, normals, mask = content(0)
    with DatasetWriter(tmp_path / "ds", make_info()) as writer:
        writer.add("ok", "s1", "train", image=image)
        with pytest.raises(InputError, match="cannot be a file name"):
            writer.add("../evil", "s1", "train", image=image)
        with pytest.raises(InputError, match="already in split 'train'"):
            writer.add("x", "s1", "test", image=image)
        with pytest.raises(InputError, match="unknown split"):
            writer.add("x", "s2", "training", image=image)
        with pytest.raises(InputError, match="neither"):
            writer.add("x", "s2", "train", mask=mask)
        with pytest.raises(InputError, match=r"shape \(8, 8, 3\)"):
            writer.add("x", "s2", "train", image=image[:8, :8])
        with pytest.raises(InputError, match="non-unit"):
            writer.add("x", "s2", "train", normals=normals * 2)
        assert writer.existing_ids() == {"ok"}
    assert not (tmp_path / "ds" / "images" / "x.png").exists()


# --------------------------------------------------------------------------- bad folders


@pytest.mark.parametrize("bad_path", ["../x.png", "/etc/passwd", "images/../../x.png",
                                      "C:/x.png", "..\\x.png"])
def test_path_escaping_the_folder(dataset, bad_path):
    edit_csv(dataset, 3, "images/a1.png", bad_path)
    with pytest.raises(InputError, match=r"line 3 \(id 'a1'\): image path .* leaves the"):
        read_dataset(dataset)
    with pytest.raises(InputError, match="line 3"):
        read_dataset(dataset, check_files=False)  # checked without touching files


def test_missing_file(dataset):
    (dataset / "normals" / "b0.exr").unlink()
    with pytest.raises(InputError, match=r"line 7 \(id 'b0'\): normal file .*b0.exr does not"):
        read_dataset(dataset)
    _, samples = read_dataset(dataset, check_files=False)
    assert len(samples) == len(ROWS)


def test_unknown_split(dataset):
    edit_csv(dataset, 2, ",train,", ",training,")
    with pytest.raises(InputError, match=r"line 2 \(id 'a0'\).*unknown split 'training'"):
        read_dataset(dataset)


def test_duplicate_id(dataset):
    edit_csv(dataset, 3, "a1,s1", "a0,s1")
    with pytest.raises(InputError, match=r"line 3 \(id 'a0'\): duplicate id, already on line 2"):
        read_dataset(dataset)


def test_empty_id(dataset):
    edit_csv(dataset, 3, "a1,s1", ",s1")
    with pytest.raises(InputError, match=r"line 3 \(id ''\): empty sample id"):
        read_dataset(dataset)


def test_subject_in_two_splits(dataset):
    edit_csv(dataset, 9, "c0,s5", "c0,s3")
    with pytest.raises(InputError, match=r"subject 's3' is in split 'val' \(line 7, id 'b0'\) "
                                         r"and 'test' \(line 9, id 'c0'\)"):
        read_dataset(dataset)


def test_bad_header_and_missing_json(dataset):
    edit_csv(dataset, 1, "normal,mask", "normals,mask")
    with pytest.raises(InputError, match=r"header.*missing \['normal'\].*unknown \['normals'\]"):
        read_dataset(dataset)
    (dataset / "dataset.json").unlink()
    with pytest.raises(InputError, match=f"{dataset} is not a dataset folder: dataset.json"):
        read_dataset(dataset)


# --------------------------------------------------------------------------- torch dataset


def test_face_normals_dataset_items(dataset):
    data = FaceNormalsDataset(dataset, split="train")
    assert len(data) == 5
    groups = {kind: [i for i, s in enumerate(data.samples) if s.kind == kind] for kind in KINDS}
    assert all(groups.values())
    assert [data.samples[i].id for i in groups["paired"]] == ["a0", "a1"]
    for kind, indices in groups.items():
        for i in indices:
            item = data[i]
            assert item["kind"] == kind and item["id"] == data.samples[i].id
            assert item["mask"].dtype == torch.bool and item["mask"].shape == (SIZE, SIZE)
            assert ("image" in item) == (kind in ("paired", "image"))
            assert ("normals" in item) == (kind in ("paired", "normal"))
            for key in ("image", "normals"):
                if key in item:
                    assert item[key].dtype == torch.float32
                    assert item[key].shape == (3, SIZE, SIZE)

    item = data[groups["paired"][0]]  # a0: seed 0
    image, normals, mask = content(0)
    np.testing.assert_array_equal(item["image"].numpy(), image.transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_array_equal(item["normals"].numpy(), normals.transpose(2, 0, 1))
    np.testing.assert_array_equal(item["mask"].numpy(), mask)
    # Without a mask file: the valid normals (normal-only), everything (image-only).
    ids = [s.id for s in data.samples]
    a3 = data[ids.index("a3")]
    np.testing.assert_array_equal(a3["mask"].numpy(), np.any(content(3)[1] != 0, axis=-1))
    assert not a3["mask"].all()
    assert data[ids.index("a2")]["mask"].all()

    # The default collate batches any one kind.
    loader = DataLoader(Subset(data, groups["paired"]), batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["id"] == ["a0", "a1"]
    assert batch["mask"].shape == (2, SIZE, SIZE)


def test_face_normals_dataset_filters(dataset):
    assert [s.id for s in FaceNormalsDataset(dataset, "val").samples] == ["b0", "b1"]
    data = FaceNormalsDataset(dataset, "train", kinds=("image",))
    assert [(s.id, s.kind) for s in data.samples] == [("a2", "image"), ("a4", "image")]
    with pytest.raises(InputError, match="unknown split"):
        FaceNormalsDataset(dataset, "dev")
    with pytest.raises(InputError, match="unknown sample kind"):
        FaceNormalsDataset(dataset, "train", kinds=("pairs",))


def test_unreadable_file_names_the_sample(dataset):
    (dataset / "images" / "a1.png").write_bytes(b"not a png")
    data = FaceNormalsDataset(dataset, "train")
    with pytest.raises(InputError, match=r"sample 'a1': cannot read image .*a1.png"):
        data[[s.id for s in data.samples].index("a1")]
    data[0]  # the others still load


def test_wrong_size_file_names_the_sample(dataset):
    io.write_image(dataset / "images" / "a2.png", np.zeros((8, 8, 3), np.uint8))
    data = FaceNormalsDataset(dataset, "train", kinds=("image",))
    with pytest.raises(InputError, match=r"sample 'a2': image .*a2.png is 8x8"):
        data[0]
