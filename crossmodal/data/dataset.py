"""A torch ``Dataset`` over one split of a dataset folder (docs/design.md §3).

The paper trains on batches of one data type at a time (paired, image-only or
normal-only, §4.1), so training opens one dataset per folder and kind
(:class:`crossmodal.engine.data.TrainSet`, which also resizes and augments) and evaluation
one over the paired rows. An item holds only the modalities its row has, so the default
``collate`` works on any batch of one kind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import io
from ..errors import InputError
from .format import KINDS, SPLITS, Sample, read_dataset

__all__ = ["FaceNormalsDataset"]


class FaceNormalsDataset(Dataset):
    """The samples of one split and some kinds of a dataset folder, as tensors.

    Item ``i`` is a dict:

    - ``"id"``: str; ``"kind"``: 'paired' | 'image' | 'normal';
    - ``"image"``: float32 ``(3, H, W)`` RGB in [0, 1] (rows with an image only);
    - ``"normals"``: float32 ``(3, H, W)`` unit vectors in our convention, zero where
      invalid (rows with normals only);
    - ``"mask"``: bool ``(H, W)``, always present: the row's facial mask; without a mask
      file, the valid normals (rows with normals) or the whole picture (image-only).

    Absent modalities are absent keys (not ``None``, which ``collate`` cannot batch).
    The losses also ignore zero (invalid) normals inside the mask.

    Raises:
        InputError: from :func:`read_dataset`; an unknown split or kind; on access, an
            unreadable or wrongly sized file (naming the sample id and the file).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        kinds: Sequence[str] = KINDS,
    ) -> None:
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise InputError(f"unknown sample kind(s) {bad or '(none given)'}; use some of "
                             f"{', '.join(KINDS)}")
        self.root = Path(root)
        self.info, samples = read_dataset(self.root)
        self.split = split
        self.samples: list[Sample] = [s for s in samples
                                      if s.split == split and s.kind in kinds]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, sample: Sample) -> dict[str, np.ndarray]:
        """Read a row's files: image ``(S, S, 3)``, normals ``(S, S, 3)``, mask ``(S, S)``."""
        size = (self.info.image_size, self.info.image_size)
        arrays: dict[str, np.ndarray] = {}
        valid: np.ndarray | None = None
        try:
            if sample.image is not None:
                arrays["image"] = io.read_image(sample.image)
            if sample.normal is not None:
                arrays["normals"], valid = io.read_normals(sample.normal)
            for name in ("image", "normals"):
                if name in arrays and arrays[name].shape[:2] != size:
                    path = sample.image if name == "image" else sample.normal
                    raise InputError(f"{name} {path} is {arrays[name].shape[1]}x"
                                     f"{arrays[name].shape[0]}, the dataset's image_size is "
                                     f"{size[0]}; re-crop it")
            if sample.mask is not None:
                arrays["mask"] = io.read_mask(sample.mask, size)
            else:
                arrays["mask"] = valid if valid is not None else np.ones(size, bool)
        except InputError as err:
            raise InputError(f"{self.root}: sample {sample.id!r}: {err}") from None
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        arrays = self._load(sample)
        item: dict[str, Any] = {
            name: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
            for name, a in arrays.items() if name != "mask"}
        item["mask"] = torch.from_numpy(arrays["mask"])
        return {"id": sample.id, "kind": sample.kind, **item}
