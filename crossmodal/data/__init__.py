"""Face datasets: the on-disk format (docs/design.md §3), augmentation and the torch dataset.

- :mod:`crossmodal.data.format`: :class:`DatasetInfo`, :class:`Sample`,
  :class:`DatasetWriter` and :func:`read_dataset`, what every producer writes and every
  consumer reads;
- :mod:`crossmodal.data.augment`: normal-aware flips, rotations and photometric jitter;
- :mod:`crossmodal.data.dataset`: :class:`FaceNormalsDataset`, a torch ``Dataset``;
- :mod:`crossmodal.data.resize`: resizing crops, normal maps and masks;
- :mod:`crossmodal.data.loader`: :class:`SafeDataLoader`, a ``DataLoader`` whose workers
  never outlive a failure.
"""

from importlib import import_module

from .format import KINDS, SPLITS, DatasetInfo, DatasetWriter, Sample, read_dataset

# The torch-based modules load on first use, so writing a dataset (the synthetic
# generator's worker processes) never pays for importing torch.
_LAZY = {"Augment": "augment", "AugmentConfig": "augment", "PhotometricJitter": "augment",
         "FaceNormalsDataset": "dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "SPLITS",
    "Augment",
    "AugmentConfig",
    "DatasetInfo",
    "DatasetWriter",
    "FaceNormalsDataset",
    "PhotometricJitter",
    "Sample",
    "read_dataset",
]
