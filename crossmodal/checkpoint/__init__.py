"""Checkpoints (docs/design.md §8): the file format and the authors' released weights.

- :mod:`crossmodal.checkpoint.format`: the format itself, atomic save, ``weights_only``
  load, the model rebuilt from the checkpoint's config alone;
- :mod:`crossmodal.checkpoint.official`: the authors' ``model.pth`` converted into it.

The package sits above :mod:`crossmodal.models` (it builds networks); no model module
imports it.
"""

from .format import (FORMAT_VERSION, REQUIRED_KEYS, build_model, load_checkpoint,
                     output_convention, save_checkpoint, unwrap_model)

__all__ = ["FORMAT_VERSION", "REQUIRED_KEYS", "build_model", "load_checkpoint",
           "output_convention", "save_checkpoint", "unwrap_model"]
