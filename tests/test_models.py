"""The cross-modal network (paper §3.1-3.2, docs/design.md §7): shapes, input checks,
deactivable skips, parameter counts, ImageNet init and the model config.

Every variant is built once per module, at the default width and at the smoke model's
narrow one (``models`` fixture), and used without gradients unless a test needs them;
tests that change weights restore them.
"""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crossmodal.checkpoint.official import ALIASES, IGNORED_PREFIXES, OFFICIAL_TO_OURS
from crossmodal.errors import CrossmodalError, InputError
from crossmodal.models import ROUTES, VARIANTS, CrossModalNet, ModelConfig, normal_loss
from crossmodal.models.decoder import Decoder
from crossmodal.models.encoder import ResNetEncoder, encoder_channels
from crossmodal.models.resnet import ResNet18Trunk
from crossmodal.models.skip import ConcatSkip, DeactivableSkip

from conftest import compact_copy, smoke_model

#: Names and shapes of every tensor in the authors' released ``model.pth``.
AUTHORS_STATE = Path(__file__).parent / "data" / "official_state_dict.json"

EXPECTED_ROUTES = {
    "full": ROUTES,
    "no_skips": ROUTES,
    "no_normal_encoder": ("image_to_normal", "image_to_image"),
    "plain_unet": ("image_to_normal",),
}
HAS_IMAGE_DECODER = {"full": True, "no_skips": True, "no_normal_encoder": True,
                     "plain_unet": False}


@pytest.fixture(scope="module")
def models():
    """``models(variant, narrow=False)``: that variant's network, the authors' widths or
    (``narrow``) the smoke model's, built (seeded) on first use, eval mode."""
    built = {}

    def get(variant, narrow=False):
        if (variant, narrow) not in built:
            torch.manual_seed(VARIANTS.index(variant))
            config = smoke_model(variant=variant) if narrow else ModelConfig(variant=variant)
            built[variant, narrow] = CrossModalNet(config).eval()
        return built[variant, narrow]

    return get


def random_normals(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=1)


def random_image(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def expected_keys(variant, route):
    if route == "image_to_normal":
        return {"normals", "image"} if HAS_IMAGE_DECODER[variant] else {"normals"}
    return {"normals"} if route == "normal_to_normal" else {"image"}


def check_route(model, variant, route, size):
    x = (random_normals if route == "normal_to_normal" else random_image)(1, 3, size, size)
    with torch.no_grad():
        out = model(x, route)
    assert set(out) == expected_keys(variant, route)
    for value in out.values():
        assert value.shape == (1, 3, size, size)
        assert torch.isfinite(value).all()
    if "normals" in out:
        norms = torch.linalg.vector_norm(out["normals"], dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


# --------------------------------------------------------------------------- shapes

ROUTE_CASES = [(v, r) for v in VARIANTS for r in EXPECTED_ROUTES[v]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_routes_per_variant(models, variant):
    assert models(variant).routes == EXPECTED_ROUTES[variant]


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("variant, route", ROUTE_CASES)
def test_route_shapes(models, variant, route, size):
    check_route(models(variant), variant, route, size)


@pytest.mark.parametrize("variant, route", ROUTE_CASES)
def test_narrow_trunk_route_shapes(models, variant, route):
    model = models(variant, narrow=True)
    assert model.config.trunk_width < 64
    check_route(model, variant, route, 64)


def test_encoder_channels_scale_with_the_trunk_width():
    """w, w, w, 2w, 4w skip channels (full-resolution branch, stem, layer1..3) and an 8w
    latent, as built and as :func:`encoder_channels` tells the decoders."""
    assert encoder_channels() == ((64, 64, 64, 128, 256), 512)
    assert encoder_channels(8) == ((8, 8, 8, 16, 32), 64)
    with torch.no_grad():
        features = ResNetEncoder(width=8)(random_image(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features.skips] == [
        (1, 8, 64, 64), (1, 8, 32, 32), (1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4)]
    assert features.latent.shape == (1, 64, 2, 2)


def test_route_shapes_256_full_image_to_normal(models):
    check_route(models("full"), "full", "image_to_normal", 256)


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("variant, route", ROUTE_CASES)
def test_route_shapes_large(models, variant, route, size):
    check_route(models(variant), variant, route, size)


def test_non_square_input(models):
    with torch.no_grad():
        out = models("full")(random_image(1, 3, 64, 96), "image_to_normal")
    assert out["normals"].shape == out["image"].shape == (1, 3, 64, 96)


def test_batch_elements_are_independent_in_eval(models):
    model = models("full")
    x = random_image(2, 3, 64, 64)
    with torch.no_grad():
        both = model(x)["normals"]
        second = model(x[1:])["normals"]
    assert torch.allclose(both[1:], second, atol=1e-5)


# --------------------------------------------------------------------------- input checks

@pytest.mark.parametrize("h, w, suggestion", [(100, 100, "96x96"), (64, 100, "96x64"),
                                              (250, 256, "256x256"), (16, 16, "32x32")])
def test_size_not_multiple_of_32(models, h, w, suggestion):
    with pytest.raises(InputError, match="multiple of 32") as err:
        models("plain_unet")(torch.zeros(1, 3, h, w))
    assert suggestion in str(err.value)


@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (1, 1, 64, 64), (3, 64, 64)])
def test_wrong_channels_or_rank(models, shape):
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        models("plain_unet")(torch.zeros(shape))


def test_route_unavailable_in_variant(models):
    with pytest.raises(InputError, match="normal_to_normal") as err:
        models("plain_unet")(torch.zeros(1, 3, 64, 64), "normal_to_normal")
    assert "valid: image_to_normal" in str(err.value)
    with pytest.raises(InputError, match="image_to_image"):
        models("plain_unet")(torch.zeros(1, 3, 64, 64), "image_to_image")
    with pytest.raises(InputError, match="valid: " + ", ".join(ROUTES)):
        models("full")(torch.zeros(1, 3, 64, 64), "image_to_depth")


# --------------------------------------------------------------------------- skips deactivated

def test_normal_to_normal_does_not_depend_on_image_encoder(models):
    model = models("full")
    normals, image = random_normals(1, 3, 64, 64, seed=1), random_image(1, 3, 64, 64, seed=2)
    saved = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    with torch.no_grad():
        n2n_before = model(normals, "normal_to_normal")["normals"]
        i2n_before = model(image, "image_to_normal")["normals"]
    try:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in model.image_encoder.parameters():
                p.mul_(-1.5).add_(torch.randn(p.shape, generator=g))
            for name, b in model.image_encoder.named_buffers():
                if b.is_floating_point():  # BN running stats (variance stays positive)
                    b.mul_(2.0).add_(0.25)
            for name, p in model.image_encoder.named_parameters():
                assert not torch.equal(p, saved[name]), name
            n2n_after = model(normals, "normal_to_normal")["normals"]
            i2n_after = model(image, "image_to_normal")["normals"]
    finally:
        model.image_encoder.load_state_dict(saved)
    assert torch.equal(n2n_after, n2n_before)
    assert not torch.allclose(i2n_after, i2n_before)  # the perturbation does matter


def _grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


def _all_zero(grads):
    return all(g is None or not torch.any(g) for g in grads.values())


def _all_nonzero(grads):
    return all(g is not None and torch.any(g) for g in grads.values())


def _backward(model, route, x):
    model.zero_grad(set_to_none=True)
    out = model(x, route)
    mask = torch.ones(1, *x.shape[2:], dtype=torch.bool)
    loss = sum(normal_loss(v, random_normals(*v.shape, seed=4), mask) for v in out.values())
    loss.backward()


def test_normal_to_normal_gradients_skip_image_side(models):
    model = models("full")
    try:
        _backward(model, "normal_to_normal", random_normals(1, 3, 64, 64, seed=5))
        assert _all_zero(_grads(model.image_encoder))
        assert _all_zero(_grads(model.image_decoder))
        assert _all_zero(_grads(model.normal_decoder.skips))  # the deactivated projections
        # E_N's full-resolution branch exists only for the released checkpoint: unused.
        assert _all_zero(_grads(model.normal_encoder.full_resolution))
        assert _all_nonzero(_grads(model.normal_encoder.trunk))
        trained = {n: g for n, g in _grads(model.normal_decoder).items()
                   if not n.startswith("skips.")}
        assert _all_nonzero(trained)
    finally:
        model.zero_grad(set_to_none=True)


def test_image_to_normal_gradients_use_skips_not_normal_encoder(models):
    model = models("full")
    try:
        _backward(model, "image_to_normal", random_image(1, 3, 64, 64, seed=6))
        assert _all_zero(_grads(model.normal_encoder))
        assert _all_nonzero(_grads(model.image_encoder))  # full-resolution branch included
        assert _all_nonzero(_grads(model.normal_decoder))  # every skip projection included
        assert _all_nonzero(_grads(model.image_decoder))
    finally:
        model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- skips active

def identity_projection(skip):
    """1x1 conv weight = identity, bias 0: the projection is ReLU(encoder)."""
    conv = skip.projection[0]
    c = skip.channels
    with torch.no_grad():
        conv.weight.copy_(torch.eye(c).reshape(c, c, 1, 1))
        conv.bias.zero_()
    return skip


def test_deactivable_skip_fuses_only_reserved_channels():
    skip = identity_projection(DeactivableSkip(3))
    decoder = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],       # kept
                            [[-1.0, 0.0], [5.0, 6.0]],      # kept
                            [[0.5, 0.5], [0.5, 0.5]],       # fused
                            [[-2.0, 7.0], [-3.0, 1.0]],     # fused
                            [[0.0, 0.0], [0.0, 0.0]]])[None]  # fused
    encoder = torch.tensor([[[1.0, 0.0], [-1.0, 0.6]],
                            [[-1.0, 5.0], [2.0, 0.5]],
                            [[-4.0, -4.0], [3.0, -0.1]]])[None]
    expected = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],
                             [[-1.0, 0.0], [5.0, 6.0]],
                             [[1.0, 0.5], [0.5, 0.6]],      # max(d, relu(e))
                             [[0.0, 7.0], [2.0, 1.0]],
                             [[0.0, 0.0], [3.0, 0.0]]])[None]
    out = skip(decoder, encoder)
    assert out.shape == decoder.shape
    assert torch.equal(out, expected)
    assert torch.equal(out[:, :2], decoder[:, :2])
    assert torch.equal(out[:, 2:], torch.maximum(decoder[:, 2:], encoder.relu()))


def test_deactivable_skip_without_projection_and_deactivated():
    decoder = torch.arange(16.0).reshape(1, 4, 2, 2) - 8
    encoder = torch.full((1, 2, 2, 2), -100.0)
    encoder[0, 1, 0, 0] = 100.0
    raw = DeactivableSkip(2, project=False)  # the full-resolution branch: no 1x1, no ReLU
    out = raw(decoder, encoder)
    expected = decoder.clone()
    expected[0, 3, 0, 0] = 100.0
    assert torch.equal(out, expected)
    for skip in (raw, DeactivableSkip(2)):
        assert skip(decoder, None) is decoder


def test_deactivable_skip_when_all_channels_are_reserved():
    skip = DeactivableSkip(2, project=False)
    decoder, encoder = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    assert torch.equal(skip(decoder, encoder), encoder)


def test_concat_skip_appends_channels():
    decoder = torch.randn(1, 5, 2, 2)
    encoder = torch.randn(1, 3, 2, 2)
    skip = identity_projection(ConcatSkip(3))
    out = skip(decoder, encoder)
    assert out.shape == (1, 8, 2, 2)
    assert torch.equal(out[:, :5], decoder)
    assert torch.equal(out[:, 5:], encoder.relu())
    raw = ConcatSkip(3, project=False)
    assert torch.equal(raw(decoder, encoder), torch.cat([decoder, encoder], dim=1))
    with pytest.raises(ValueError, match="cannot be deactivated"):
        skip(decoder, None)


def _stage_inputs(decoder, latent, skips=None, replace_outputs=None):
    """Run ``decoder`` capturing each stage conv's input and output; with
    ``replace_outputs`` each stage's output is swapped for the given one, so every stage
    sees the same decoder features as in the run that produced them."""
    inputs, outputs, handles = [], [], []
    for i, stage in enumerate(decoder.stages):
        handles.append(stage.register_forward_pre_hook(
            lambda m, args: inputs.append(args[0].clone())))
        handles.append(stage.register_forward_hook(
            lambda m, args, out, i=i: outputs.append(out.clone()) if replace_outputs is None
            else replace_outputs[i]))
    try:
        with torch.no_grad():
            final = decoder(latent, skips)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs, final


def test_decoder_skips_touch_only_reserved_channels():
    """The authors' D_N widths with identity projections: large encoder features replace
    exactly the last C channels entering each stage conv, zero ones change nothing."""
    torch.manual_seed(0)
    widths = ModelConfig().normal_decoder_widths
    channels = encoder_channels().skips[::-1]  # (256, 128, 64, 64, 64)
    decoder = Decoder(widths, channels, "deactivable").eval()
    for skip in decoder.skips[:4]:
        identity_projection(skip)
    latent = torch.rand(1, 512, 1, 1)
    large = [1000.0 + torch.rand(1, c, 2 ** (i + 1), 2 ** (i + 1))
             for i, c in enumerate(channels)]
    off_in, off_out, off_final = _stage_inputs(decoder, latent)
    on_in, _, _ = _stage_inputs(decoder, latent, large, replace_outputs=off_out)
    for i, (w, c) in enumerate(zip(widths, channels)):
        size = 2 ** (i + 1)
        assert off_in[i].shape == on_in[i].shape == (1, w, size, size)
        assert torch.equal(on_in[i][:, :w - c], off_in[i][:, :w - c]), i
        assert torch.equal(on_in[i][:, w - c:], large[i]), i
        assert (on_in[i][:, w - c:] != off_in[i][:, w - c:]).all(), i
    # Decoder features are ReLU outputs (>= 0): max-fusing zeros leaves them as they are.
    zeros = [torch.zeros_like(f) for f in large]
    zero_in, _, zero_final = _stage_inputs(decoder, latent, zeros)
    assert all(torch.equal(a, b) for a, b in zip(zero_in, off_in))
    assert torch.equal(zero_final, off_final)


def test_model_skips_change_image_to_normal(models):
    """In the full model the image->normal pass really uses the skips: the same latent
    decoded without them gives another result."""
    model = models("full")
    image = random_image(1, 3, 64, 64, seed=7)
    with torch.no_grad():
        with_skips = model(image)["normals"]
        latent = model.image_encoder(image, with_skips=False).latent
        without = model._normals(model.normal_decoder(latent))
    assert not torch.allclose(with_skips, without)


# --------------------------------------------------------------------------- parameter counts

def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def basic_block(cin, c, stride):
    n = conv(cin, c, 3, False) + bn(c) + conv(c, c, 3, False) + bn(c)
    if stride != 1 or cin != c:
        n += conv(cin, c, 1, False) + bn(c)
    return n


def trunk_params(w):
    """ResNet-18 without its classifier at base width w."""
    return (conv(3, w, 7, False) + bn(w)
            + basic_block(w, w, 1) + basic_block(w, w, 1)
            + basic_block(w, 2 * w, 2) + basic_block(2 * w, 2 * w, 1)
            + basic_block(2 * w, 4 * w, 2) + basic_block(4 * w, 4 * w, 1)
            + basic_block(4 * w, 8 * w, 2) + basic_block(8 * w, 8 * w, 1))


def hand_count(config):
    """Counted from the channel arithmetic of docs/design.md §7, at any trunk width."""
    w, head = config.trunk_width, config.head_channels
    skips = (4 * w, 2 * w, w, w, w)                                # deep to shallow
    full_res = conv(3, w, 3) + conv(w, w, 3)                       # conv_original_size0/1

    def decoder(widths, mode):
        appended = skips if mode == "concat" else (0,) * 5
        outputs = [c - a for c, a in zip(widths[1:], appended[1:])] + [head]
        n = sum(conv(c, o, 3) for c, o in zip(widths, outputs)) + conv(head, 3, 1)
        if mode != "image":
            n += conv(8 * w, widths[0] - appended[0], 1)           # layer4_1x1
        if mode in ("deactivable", "concat"):
            n += sum(conv(c, c, 1) for c in skips[:4])             # layer3..layer0 _1x1
        return n

    trunk, d_i = trunk_params(w), decoder(config.image_decoder_widths, "image")
    d_n = {mode: decoder(config.normal_decoder_widths, mode)
           for mode in ("deactivable", "none", "concat")}
    return {"full": 2 * (trunk + full_res) + d_n["deactivable"] + d_i,
            "no_skips": 2 * trunk + d_n["none"] + d_i,
            "no_normal_encoder": trunk + full_res + d_n["concat"] + d_i,
            "plain_unet": trunk + full_res + d_n["concat"]}[config.variant]


#: The authors' widths, measured once and pinned, so that the model and the arithmetic
#: above cannot drift together.
COUNTS = {"full": 35_267_654, "no_skips": 35_099_590, "no_normal_encoder": 22_298_758,
          "plain_unet": 17_799_939}


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_trunk_parameter_counts():
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its classifier.
    assert n_trainable(ResNet18Trunk()) == trunk_params(64) == 11_689_512 - 513_000
    for width in (8, 3):
        assert n_trainable(ResNet18Trunk(width=width)) == trunk_params(width), width


@pytest.mark.parametrize("narrow", [False, True], ids=["default", "narrow"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts(models, variant, narrow):
    model = models(variant, narrow)
    count = n_trainable(model)
    assert count == hand_count(model.config)
    assert sum(p.numel() for p in model.parameters()) == count  # none frozen
    if not narrow:
        assert count == COUNTS[variant]
    if variant != "full":
        assert count < n_trainable(models("full", narrow))


def test_default_model_has_the_authors_parameters(models):
    """As many parameters as the authors' released state dict lists, counted without its
    ``base_model.*`` aliases of the image encoder, its unused classifier and the BN
    buffers."""
    reference = json.loads(AUTHORS_STATE.read_text())
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    authors = sum(torch.Size(shape).numel() for name, shape in reference.items()
                  if not name.startswith("base_model.") and not name.endswith(buffers))
    assert n_trainable(models("full")) == authors


def test_default_width_keeps_the_authors_tensors(models):
    """trunk_width's default builds exactly the tensors of the released ``model.pth``: each
    of theirs but the aliases and the classifier is one of ours, with its shape."""
    reference = json.loads(AUTHORS_STATE.read_text())
    theirs = {OFFICIAL_TO_OURS[name]: tuple(shape) for name, shape in reference.items()
              if name in OFFICIAL_TO_OURS}
    ignored = [name for name in reference if name.startswith(IGNORED_PREFIXES)]
    assert len(theirs) == len(reference) - len(ALIASES) - len(ignored) == 282
    ours = {name: tuple(t.shape) for name, t in models("full").state_dict().items()}
    assert ours == theirs


# --------------------------------------------------------------------------- ImageNet init

def imagenet_state():
    """A torchvision resnet18 state dict of random values, small on disk (compact_copy)."""
    state = {k: v if v.is_floating_point() else torch.tensor(7, dtype=v.dtype)
             for k, v in ResNet18Trunk().state_dict().items()}
    state["fc.weight"] = torch.empty(1000, 512)
    state["fc.bias"] = torch.empty(1000)
    return compact_copy(state)


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A good resnet18 state dict file and its content."""
    state = imagenet_state()
    path = tmp_path_factory.mktemp("imagenet") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_imagenet_init_loads_both_trunks(imagenet_file):
    path, state = imagenet_file
    model = CrossModalNet(ModelConfig(imagenet_weights=str(path)))
    for encoder in (model.image_encoder, model.normal_encoder):
        own = encoder.trunk.state_dict()
        assert set(own) == set(state) - {"fc.weight", "fc.bias"}
        for k, v in own.items():
            assert torch.equal(v, state[k]), k
    assert model.image_encoder.trunk.conv1.weight is not model.normal_encoder.trunk.conv1.weight


def test_imagenet_init_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(CrossmodalError, match=re.escape(str(path))):
        CrossModalNet(ModelConfig(variant="plain_unet", imagenet_weights=str(path)))


def test_imagenet_init_wrong_shape(tmp_path):
    state = imagenet_state()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with pytest.raises(CrossmodalError, match=re.escape(str(path))) as err:
        CrossModalNet(ModelConfig(variant="plain_unet", imagenet_weights=str(path)))
    assert "layer1.0.conv1.weight" in str(err.value)


def test_imagenet_init_not_a_state_dict(tmp_path):
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CrossmodalError, match=re.escape(str(path))):
        CrossModalNet(ModelConfig(variant="plain_unet", imagenet_weights=str(path)))


# --------------------------------------------------------------------------- config

def test_config_from_dict_rejects_unknown_key():
    with pytest.raises(InputError, match="widht") as err:
        ModelConfig.from_dict({"variant": "full", "widht": 3})
    for key in ("variant", "trunk_width", "normal_decoder_widths", "image_decoder_widths",
                "head_channels", "output_activation", "imagenet_weights"):
        assert key in str(err.value)


def test_config_round_trip(tmp_path):
    cfg = ModelConfig(variant="no_skips", output_activation="tanh",
                      normal_decoder_widths=[768, 640, 320, 320, 192])
    d = cfg.to_dict()
    assert d["normal_decoder_widths"] == [768, 640, 320, 320, 192]
    assert all(not isinstance(v, tuple) for v in d.values())
    assert ModelConfig.from_dict(d) == cfg
    torch.save({"config": d}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["config"]
    assert ModelConfig.from_dict(loaded) == cfg
    assert ModelConfig.from_dict({}) == ModelConfig()


@pytest.mark.parametrize("kwargs, name", [({"variant": "tiny"}, "variant"),
                                          ({"output_activation": "sigmoid"},
                                           "output_activation")])
def test_config_invalid_values(kwargs, name):
    with pytest.raises(InputError, match=name):
        ModelConfig(**kwargs)
    with pytest.raises(InputError, match=name):
        ModelConfig.from_dict(kwargs)


def test_tanh_output_is_unit_and_differs(models):
    plain = models("plain_unet")
    torch.manual_seed(0)
    tanh = CrossModalNet(ModelConfig(variant="plain_unet", output_activation="tanh")).eval()
    tanh.load_state_dict(plain.state_dict())
    image = random_image(1, 3, 64, 64, seed=8)
    with torch.no_grad():
        a, b = tanh(image)["normals"], plain(image)["normals"]
    norms = torch.linalg.vector_norm(a, dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert not torch.allclose(a, b)


def test_imagenet_init_without_num_batches_tracked(tmp_path):
    state = {k: v for k, v in imagenet_state().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = CrossModalNet(ModelConfig(variant="plain_unet", imagenet_weights=str(path)))
    assert torch.equal(model.image_encoder.trunk.conv1.weight, state["conv1.weight"])


def test_imagenet_init_refuses_a_narrow_trunk(imagenet_file):
    path, _ = imagenet_file  # a good file: the width is what is refused
    with pytest.raises(CrossmodalError, match=re.escape(str(path))) as err:
        CrossModalNet(ModelConfig(trunk_width=32, imagenet_weights=str(path),
                                  image_decoder_widths=(256, 512, 256, 256, 128)))
    assert "trunk of width 32" in str(err.value)
    assert "set model.trunk_width to 64" in str(err.value)


def test_imagenet_init_file_without_a_dict(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CrossmodalError, match=re.escape(str(path))):
        CrossModalNet(ModelConfig(variant="plain_unet", imagenet_weights=str(path)))


@pytest.mark.parametrize("override, message", [
    ({"normal_decoder_widths": (768, 640, 320, 320)}, "5 positive widths"),
    ({"normal_decoder_widths": (768, 640, 320, 64, 192)}, "must exceed the skip channels"),
    ({"image_decoder_widths": (256, 512, 256, 256, 128)}, "start with the latent's 512"),
    ({"head_channels": 0}, "head_channels must be positive"),
    ({"trunk_width": 0}, "trunk_width must be positive, got 0"),
    # The skips and the latent scale with the trunk: 4w, 2w, w, w, w and 8w channels.
    ({"trunk_width": 256}, "must exceed the skip channels [1024, 512, 256, 256, 256] of "
                           "trunk_width 256"),
    ({"trunk_width": 8, "normal_decoder_widths": (48, 40, 20, 20, 8),
      "image_decoder_widths": (64, 32, 16, 16, 8)},
     "must exceed the skip channels [32, 16, 8, 8, 8] of trunk_width 8"),
    ({"trunk_width": 128}, "start with the latent's 1024 channels (8 x trunk_width 128), "
                           "got 512"),
])
def test_config_rejects_widths_the_graph_cannot_take(override, message):
    # Caught when the config is read (from YAML or a checkpoint), not deep in a decoder.
    with pytest.raises(InputError, match=re.escape(message)):
        ModelConfig(**override)
