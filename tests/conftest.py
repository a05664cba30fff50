"""Shared fixtures: a small synthetic dataset and a narrow model for engine tests."""

from dataclasses import replace

import pytest

from crossmodal.synth.generate import generate
from crossmodal.synth.sampler import SynthConfig

#: Narrow decoders over the full ResNet encoders: the real graph, ~5x cheaper.
TINY_MODEL = {"normal_decoder_widths": (288, 160, 80, 80, 72),
              "image_decoder_widths": (512, 64, 32, 32, 16), "head_channels": 16}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """20 synthetic faces at 64 px in ``data_root/synth``: train rows of all three kinds,
    plus val and test identities."""
    root = tmp_path_factory.mktemp("data")
    generate(root / "synth", 20, seed=0, progress=False,
             config=replace(SynthConfig(), size=64, samples_per_subject=2))
    return root
