"""The authors' released weights -> our model: renaming, checks, and the same function.

The authors' state dict is rebuilt here from their architecture (docs/design.md §7), checked
against the names and shapes of the released ``model.pth`` (``tests/data/``), filled with
random weights, and run through an independent functional re-statement of
their ``ResNetUNet`` forward pass, which must agree with our converted model.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crossmodal.checkpoint import build_model, load_checkpoint
from crossmodal.checkpoint.official import (
    _read_state_dict, convert_official_state_dict)
from crossmodal.checkpoint import official as official_module
from crossmodal.cli import main
from crossmodal.errors import CrossmodalError
from crossmodal.inference import trained_image_size
from crossmodal.models import CrossModalNet, ModelConfig

from conftest import compact_copy

#: Every tensor name and shape of the authors' released model.pth (tests/data/README.md).
RELEASED_SHAPES = Path(__file__).parent / "data" / "official_state_dict.json"
ATOL = 1e-5


# --- their state dict: names and shapes from their architecture ---------------------------

def _bn(prefix: str, c: int) -> dict[str, list[int]]:
    return {f"{prefix}.{p}": [c] for p in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": []}


def _resnet_layer(prefix: str, cin: int, cout: int) -> dict[str, list[int]]:
    """torchvision resnet18 ``layerK``: two basic blocks, the first projecting when the
    width changes."""
    shapes = {}
    for b, c_in in enumerate((cin, cout)):
        p = f"{prefix}.{b}"
        shapes |= {f"{p}.conv1.weight": [cout, c_in, 3, 3]} | _bn(f"{p}.bn1", cout)
        shapes |= {f"{p}.conv2.weight": [cout, cout, 3, 3]} | _bn(f"{p}.bn2", cout)
        if c_in != cout:
            shapes |= {f"{p}.downsample.0.weight": [cout, c_in, 1, 1]}
            shapes |= _bn(f"{p}.downsample.1", cout)
    return shapes


def _conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [cout, cin, k, k], f"{prefix}.bias": [cout]}


_LAYERS = {1: (64, 64), 2: (64, 128), 3: (128, 256), 4: (256, 512)}


def official_shapes() -> dict[str, list[int]]:
    """Every tensor of their ``ResNetUNet(n_class=3).state_dict()`` with its shape."""
    shapes = {"base_model.conv1.weight": [64, 3, 7, 7]} | _bn("base_model.bn1", 64)
    for k, (cin, cout) in _LAYERS.items():
        shapes |= _resnet_layer(f"base_model.layer{k}", cin, cout)
    shapes |= {"base_model.fc.weight": [1000, 512], "base_model.fc.bias": [1000]}
    for s in ("", "_2"):  # the image and the normal encoder
        shapes |= {f"layer0{s}.0.weight": [64, 3, 7, 7]} | _bn(f"layer0{s}.1", 64)
        shapes |= _resnet_layer(f"layer1{s}.1", 64, 64)  # index 0 is the maxpool
        for k in (2, 3, 4):
            shapes |= _resnet_layer(f"layer{k}{s}", *_LAYERS[k])
        shapes |= _conv(f"conv_original_size0{s}.0", 64, 3, 3)
        shapes |= _conv(f"conv_original_size1{s}.0", 64, 64, 3)
    for k, c in ((0, 64), (1, 64), (2, 128), (3, 256)):
        shapes |= _conv(f"layer{k}_1x1.0", c, c, 1)
    shapes |= _conv("layer4_1x1.0", 768, 512, 1)
    for name, cin, cout in (("conv_up3", 768, 640), ("conv_up2", 640, 320),
                            ("conv_up1", 320, 320), ("conv_up0", 320, 192),
                            ("conv_original_size2", 192, 64), ("conv_up3_2", 512, 512),
                            ("conv_up2_2", 512, 256), ("conv_up1_2", 256, 256),
                            ("conv_up0_2", 256, 128), ("conv_original_size2_2", 128, 64)):
        shapes |= _conv(f"{name}.0", cout, cin, 3)
    return shapes | _conv("conv_last", 3, 64, 1) | _conv("conv_last_2", 3, 64, 1)


def _alias_target(name: str) -> str | None:
    """For ``base_model.X`` (not fc), their other name of the same tensor."""
    if not name.startswith("base_model.") or name.startswith("base_model.fc."):
        return None
    rest = name[len("base_model."):]
    for ours, theirs in (("conv1.", "layer0.0."), ("bn1.", "layer0.1."),
                         ("layer1.", "layer1.1.")):
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    return rest  # layer2..4 are the resnet layers themselves


def random_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a sensible scale (He init, BN near identity) under their names;
    ``base_model.*`` holds the very tensors it aliases, as in a real checkpoint."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    shapes = official_shapes()
    for name, shape in shapes.items():
        if _alias_target(name):
            continue
        if name.endswith("num_batches_tracked"):
            t = torch.tensor(1000 + len(state), dtype=torch.long)
        elif name.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif len(shape) == 1 and name.endswith(".weight"):  # only BatchNorms have these
            t = torch.rand(shape, generator=g) + 0.5
        else:
            t = torch.randn(shape, generator=g) * 0.1
        state[name] = t
    # Every name in its place, the aliases sharing their targets' tensors.
    return {name: state[_alias_target(name) or name] for name in shapes}


# --- their forward pass, re-stated with torch.nn.functional on their names ----------------

def _bn_eval(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"],
                        sd[f"{p}.weight"], sd[f"{p}.bias"], training=False, eps=1e-5)


def _block(x, sd, p, stride):
    out = F.relu(_bn_eval(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1),
                          sd, f"{p}.bn1"))
    out = _bn_eval(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
    identity = x
    if f"{p}.downsample.0.weight" in sd:
        identity = _bn_eval(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride),
                            sd, f"{p}.downsample.1")
    return F.relu(out + identity)


def _convrelu(x, sd, p, padding):
    return F.relu(F.conv2d(x, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], padding=padding))


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def _their_encoder(x, sd, s):
    """x_original, layer0 .. layer4 of their image (s='') or normal (s='_2') encoder."""
    x_original = _convrelu(_convrelu(x, sd, f"conv_original_size0{s}", 1), sd,
                           f"conv_original_size1{s}", 1)
    layer0 = F.relu(_bn_eval(F.conv2d(x, sd[f"layer0{s}.0.weight"], stride=2, padding=3),
                             sd, f"layer0{s}.1"))
    layer1 = F.max_pool2d(layer0, 3, 2, 1)
    for b in (0, 1):
        layer1 = _block(layer1, sd, f"layer1{s}.1.{b}", 1)
    layers = [layer0, layer1]
    for k in (2, 3, 4):
        layers.append(_block(_block(layers[-1], sd, f"layer{k}{s}.0", 2), sd,
                             f"layer{k}{s}.1", 1))
    return x_original, layers


def their_normals(x, sd, route="image_to_normal"):
    """Their normal decoder after the image encoder (skips on) or the normal encoder
    (skips off), L2-normalised as their tester.py does."""
    x_original, layers = _their_encoder(x, sd, "" if route == "image_to_normal" else "_2")
    skips = route == "image_to_normal"
    x1 = _convrelu(layers[4], sd, "layer4_1x1", 0)
    # Their literal split points: channels before them are kept, the rest max-fused.
    for conv, k, keep in (("conv_up3", 3, 512), ("conv_up2", 2, 512), ("conv_up1", 1, 256),
                          ("conv_up0", 0, 256)):
        x1 = _up(x1)
        if skips:
            proj = _convrelu(layers[k], sd, f"layer{k}_1x1", 0)
            x1 = torch.cat([x1[:, :keep], torch.max(x1[:, keep:], proj)], dim=1)
        x1 = _convrelu(x1, sd, conv, 1)
    x1 = _up(x1)
    if skips:
        x1 = torch.cat([x1[:, :128], torch.max(x1[:, 128:], x_original)], dim=1)
    x1 = _convrelu(x1, sd, "conv_original_size2", 1)
    out = F.conv2d(x1, sd["conv_last.weight"], sd["conv_last.bias"])
    return out / out.norm(dim=1, keepdim=True)


def their_image(x, sd):
    """Their image decoder on the image encoder's layer4: no skips, no activation."""
    x2 = _their_encoder(x, sd, "")[1][4]
    for conv in ("conv_up3_2", "conv_up2_2", "conv_up1_2", "conv_up0_2",
                 "conv_original_size2_2"):
        x2 = _convrelu(_up(x2), sd, conv, 1)
    return F.conv2d(x2, sd["conv_last_2.weight"], sd["conv_last_2.bias"])


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official():
    return random_official_state()


@pytest.fixture(scope="module")
def converted(official):
    state, report = convert_official_state_dict(official)
    model = CrossModalNet(ModelConfig())
    model.load_state_dict(state, strict=True)
    return model.eval(), report


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 64, 64, generator=g)
    normals = F.normalize(torch.randn(2, 3, 64, 64, generator=g), dim=1)
    return image, normals


# --- tests ---------------------------------------------------------------------------------

def test_the_restated_names_match_the_released_file():
    """Our statement of their names and shapes is exactly the released model.pth's (all 404
    tensors), so the conversion tests below exercise the real file's layout."""
    released = json.loads(RELEASED_SHAPES.read_text(encoding="utf-8"))
    assert len(released) == 404
    assert official_shapes() == released


def test_every_source_tensor_is_used_once_and_every_model_tensor_filled(official, converted):
    model, report = converted
    used = report.mapped + report.aliases_checked + report.ignored
    assert sorted(used) == sorted(official)  # each source name exactly once
    assert len(used) == len(set(used)) == len(official) == 404
    assert len(report.mapped) == len(model.state_dict()) == 282
    assert len(report.aliases_checked) == 120
    assert sorted(report.ignored) == ["base_model.fc.bias", "base_model.fc.weight"]
    assert report.filled_defaults == []
    assert "282 tensors mapped" in report.summary()


@pytest.mark.parametrize("route", ["image_to_normal", "normal_to_normal"])
def test_converted_model_computes_their_normals(official, converted, inputs, route):
    model, _ = converted
    x = inputs[0] if route == "image_to_normal" else inputs[1]
    with torch.no_grad():
        ours = model(x, route)["normals"]
        theirs = their_normals(x, official, route)
    assert ours.shape == (2, 3, 64, 64)
    assert theirs.std(dim=(0, 2, 3)).min() > 0.05  # a non-degenerate comparison
    assert (ours - theirs).abs().max() < ATOL


def test_converted_model_computes_their_image(official, converted, inputs):
    model, _ = converted
    with torch.no_grad():
        ours = model(inputs[0], "image_to_normal")["image"]
        theirs = their_image(inputs[0], official)
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)


def test_the_skips_matter(official, converted, inputs):
    """The image->normal comparison would catch dropped skips: without them the
    re-statement's output is far from ours."""
    model, _ = converted
    with torch.no_grad():
        ours = model(inputs[0], "image_to_normal")["normals"]
        # Zero projections and a zero full-resolution branch: max(x, 0) = x after a ReLU.
        inert = [f"layer{k}_1x1.0.{p}" for k in range(4) for p in ("weight", "bias")]
        inert += ["conv_original_size1.0.weight", "conv_original_size1.0.bias"]
        no_skips = dict(official) | {k: torch.zeros_like(official[k]) for k in inert}
        assert (ours - their_normals(inputs[0], no_skips)).abs().max() > 1e-2


def test_missing_batch_counters_are_filled(official):
    old = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    state, report = convert_official_state_dict(old)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert sorted(report.filled_defaults) == sorted(counters)
    assert len(counters) == 2 * 20  # two trunks of 20 BatchNorms each
    assert all(state[k].item() == 0 and state[k].dtype == torch.long for k in counters)
    assert len(report.mapped) + len(report.aliases_checked) + len(report.ignored) == len(old)


def test_an_alias_that_differs_is_refused(official):
    bad = dict(official)
    bad["base_model.layer2.0.conv1.weight"] = official["layer2.0.conv1.weight"] + 1e-3
    with pytest.raises(CrossmodalError, match=r"not the authors' checkpoint: "
                       r"base_model\.layer2\.0\.conv1\.weight differs from layer2\.0\.conv1"):
        convert_official_state_dict(bad)


@pytest.mark.parametrize("change, named", [
    (lambda s: s.update({"decoder.extra.weight": torch.zeros(3)}), "decoder.extra.weight"),
    (lambda s: s.pop("conv_up2.0.weight"), "conv_up2.0.weight"),
    (lambda s: s.update({"conv_last.weight": torch.zeros(3, 64, 3, 3)}),
     r"conv_last.weight \[3, 64, 3, 3\] \(expected \[3, 64, 1, 1\]\)"),
], ids=["unknown", "missing", "wrong-shape"])
def test_bad_state_dicts_are_refused_naming_the_key(official, change, named):
    bad = dict(official)
    change(bad)
    with pytest.raises(CrossmodalError, match=named):
        convert_official_state_dict(bad)


def test_wrappers_and_dataparallel_prefix_are_accepted(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module.conv_last.bias": torch.ones(3)}}, path)
    state = _read_state_dict(path)
    assert list(state) == ["conv_last.bias"]


def test_import_official_records_the_model_and_its_resolution(tmp_path, official,
                                                              monkeypatch, capsys):
    """The command's whole path but the final write (the slow end-to-end test below writes
    the 141 MB checkpoint): the checkpoint it would save."""
    pth = tmp_path / "model.pth"
    torch.save(compact_copy(official), pth)
    assert pth.stat().st_size < 20e6
    saved = {}
    monkeypatch.setattr(official_module, "save_checkpoint",
                        lambda path, **checkpoint: saved.update(checkpoint, path=path))
    assert main(["import-official", str(pth), "--out", str(tmp_path / "o.pt")]) == 0
    assert "282 tensors mapped, 120 aliases checked, 2 ignored" in capsys.readouterr().err
    assert saved["path"] == tmp_path / "o.pt"
    assert saved["config"] == {"model": ModelConfig().to_dict(), "data": {"image_size": 256},
                               "source": {"official_model": str(pth),
                                          "output_convention": "official"}}
    assert trained_image_size(saved) == 256  # the inference path runs it at 256 px
    expected, _ = convert_official_state_dict(torch.load(pth, weights_only=True))
    got = saved["model"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


@pytest.mark.slow
def test_import_official_cli_end_to_end(tmp_path, official, converted, inputs, capsys):
    pth, ckpt = tmp_path / "model.pth", tmp_path / "out" / "official.pt"
    torch.save(official, pth)
    assert main(["import-official", str(pth), "--out", str(ckpt)]) == 0
    assert "282 tensors mapped, 120 aliases checked, 2 ignored" in capsys.readouterr().err

    checkpoint = load_checkpoint(ckpt)
    assert checkpoint["config"]["source"] == {"official_model": str(pth),
                                              "output_convention": "official"}
    assert checkpoint["config"]["model"] == ModelConfig().to_dict()
    assert checkpoint["config"]["data"] == {"image_size": 256}
    assert checkpoint["step"] == 0 and checkpoint["metrics"] == {}
    rebuilt = build_model(checkpoint)
    with torch.no_grad():
        for route, x in (("image_to_normal", inputs[0]), ("normal_to_normal", inputs[1])):
            expected, got = converted[0](x, route), rebuilt(x, route)
            assert expected.keys() == got.keys()
            assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("content", [b"not a torch file at all", b"PK\x03\x04truncated"])
def test_a_corrupt_pth_is_one_line_and_status_2(tmp_path, capsys, content):
    pth = tmp_path / "model.pth"
    pth.write_bytes(content)
    assert main(["import-official", str(pth), "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(pth) in err[0] and err[0].startswith("crossmodal: error:")
    assert not (tmp_path / "o.pt").exists()


def test_a_wrong_state_dict_file_names_the_file(tmp_path, capsys):
    pth = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, pth)
    assert main(["import-official", str(pth), "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(pth) in err and "fc.weight" in err and "missing tensors" in err
