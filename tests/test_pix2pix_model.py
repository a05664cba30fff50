"""The Pix2Pix baseline of "Normal Map Estimation in the Wild" (crossmodal.models.pix2pix,
crossmodal.models.vgg): shapes, init, the discriminator, VGG16's torchvision names, the
perceptual loss, and the generator through checkpoints, inference and ONNX export.

Narrow widths keep it fast; init statistics use the default widths for enough samples.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.checkpoint import build_model, load_checkpoint, save_checkpoint
from crossmodal.config import config_from_dict
from crossmodal.errors import CrossmodalError, InputError
from crossmodal.inference import NormalPredictor
from crossmodal.models import (
    MODEL_VARIANTS, PIX2PIX, VARIANTS, CrossModalNet, ModelConfig, PatchDiscriminator,
    Pix2PixGenerator, adversarial_loss, build_network)
from crossmodal.models.pix2pix import ResidualBlock
from crossmodal.models.vgg import VGG16, PerceptualLoss, load_vgg16_weights

#: torchvision's vgg16 configuration "D".
CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig(variant=PIX2PIX, pix2pix_width=8, discriminator_width=8, **changes)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Pix2PixGenerator(tiny_config()).eval()


def random_image(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def torchvision_vgg16_names() -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of ``torchvision.models.vgg16().features``, from configuration D."""
    expected, index, channels = [], 0, 3
    for v in CFG_D:
        if v == "M":
            index += 1
            continue
        expected += [(f"features.{index}.weight", (v, channels, 3, 3)),
                     (f"features.{index}.bias", (v,))]
        index, channels = index + 2, v  # the conv, then its ReLU
    return expected


# --------------------------------------------------------------------------- generator

@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (128, 128), (64, 96)])
def test_generator_shapes_and_unit_normals(generator, size, batch):
    with torch.no_grad():
        out = generator(random_image(batch, 3, *size))
    assert list(out) == ["normals"]
    assert out["normals"].shape == (batch, 3, *size)
    norms = torch.linalg.vector_norm(out["normals"], dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_generator_calling_convention(generator):
    x = random_image(1, 3, 32, 32)
    assert generator.routes == ("image_to_normal",)
    with torch.no_grad():
        a = generator(x, "image_to_normal", outputs=("normals",))["normals"]
        assert torch.equal(a, generator(x)["normals"])
    with pytest.raises(InputError, match=r"route 'normal_to_normal' is not available in the "
                                         r"'pix2pix' variant; valid: image_to_normal$"):
        generator(x, "normal_to_normal")
    with pytest.raises(InputError, match="produces normals; asked for normals, image$"):
        generator(x, outputs=("normals", "image"))


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 76, 64), "input size 64x76 is not a positive multiple of 16 (the pix2pix generator "
                     "halves it 4 times); crop or resize to e.g. 64x80"),
    ((1, 3, 8, 8), "input size 8x8 is not a positive multiple of 16"),
    ((1, 4, 64, 64), "expected a (B, 3, H, W) batch, got shape (1, 4, 64, 64)"),
    ((3, 64, 64), "expected a (B, 3, H, W) batch, got shape (3, 64, 64)"),
])
def test_generator_input_checks(generator, shape, message):
    with pytest.raises(InputError, match=re.escape(message)):
        generator(torch.zeros(shape))


@pytest.mark.parametrize("size", [(7, 9), (16, 16)])
def test_block_sizes(size):
    """Stride-1 4x4 convs keep any size exactly; stride 2 halves even sizes."""
    x = random_image(2, 4, *size)
    assert ResidualBlock(4, 4)(x).shape == (2, 4, *size)
    assert ResidualBlock(4, 6)(x).shape == (2, 6, *size)
    if size[0] % 2 == 0:
        assert ResidualBlock(4, 6, 2)(x).shape == (2, 6, size[0] // 2, size[1] // 2)


def test_generator_structure():
    """Four down and four up blocks, the extra block, residual shortcuts and a tanh head."""
    model = Pix2PixGenerator(tiny_config())
    assert len(model.down) == len(model.up) == 4
    assert [b.conv2.out_channels for b in model.down] == [8, 16, 32, 64]
    assert [b.conv2.out_channels for b in model.up] == [32, 16, 8, 8]
    assert all(b.conv1.kernel_size == b.conv2.kernel_size == (4, 4)
               for b in [*model.down, *model.up, model.refine])
    assert model.refine.shortcut is None and model.refine.conv1.in_channels == 8
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    # The head's tanh bounds each component before the normalisation.
    with torch.no_grad():
        model.head.bias.fill_(100.0)
        model.eval()
        normals = model(random_image(1, 3, 32, 32))["normals"]
    assert torch.allclose(normals, torch.full_like(normals, 3 ** -0.5), atol=1e-5)


def _init_stats(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    convs = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    bns = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    biases = torch.cat([m.bias for m in model.modules()
                        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and m.bias is not None])
    return convs.detach(), bns.detach(), biases.detach()


@pytest.mark.parametrize("build", [Pix2PixGenerator, PatchDiscriminator])
def test_init_statistics(build):
    torch.manual_seed(1)
    convs, bns, biases = _init_stats(build(ModelConfig(variant=PIX2PIX)))
    assert abs(convs.mean()) < 1e-3 and abs(convs.std() - 0.02) < 2e-4
    assert abs(bns.mean() - 1) < 2e-3 and abs(bns.std() - 0.02) < 2e-3
    assert torch.equal(biases, torch.zeros_like(biases))


def test_parameter_counts():
    config = ModelConfig(variant=PIX2PIX)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(Pix2PixGenerator(config)) == 13_840_643
    # Pix2Pix's 70x70 PatchGAN on 6 input channels.
    assert count(PatchDiscriminator(config)) == 2_768_705
    assert count(VGG16()) == 14_714_688


# --------------------------------------------------------------------------- discriminator

@pytest.mark.parametrize("layers, side", [(3, 14), (2, 30)])
def test_discriminator_patch_shape(layers, side):
    model = PatchDiscriminator(tiny_config(discriminator_layers=layers)).eval()
    with torch.no_grad():
        logits = model(random_image(2, 3, 128, 128), random_image(2, 3, 128, 128, seed=1))
    assert logits.shape == (2, 1, side, side)


def test_discriminator_layers_and_input_checks():
    model = PatchDiscriminator(ModelConfig(variant=PIX2PIX))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (6, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    with pytest.raises(InputError, match="one \\(B, 3, H, W\\) shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputError, match="needs sides of at least 24 px, got 16x16"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_adversarial_loss_is_bce_with_logits():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    assert torch.allclose(adversarial_loss(logits, True), -F.logsigmoid(logits).mean())
    assert torch.allclose(adversarial_loss(logits, False), -F.logsigmoid(-logits).mean())
    assert torch.isclose(adversarial_loss(torch.zeros(2, 1, 3, 3), True), torch.log(
        torch.tensor(2.0)))


# --------------------------------------------------------------------------- VGG16

def test_vgg16_has_torchvision_names_and_shapes():
    state = VGG16().state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == torchvision_vgg16_names()
    assert len(VGG16().features) == 31


@pytest.fixture
def vgg_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=g) for name, shape in torchvision_vgg16_names()}
    # torchvision's classifier, which is not loaded (small stand-ins: only names matter).
    state.update({"classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4),
                  "classifier.6.weight": torch.zeros(2, 4)})
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    return path, state


def test_load_vgg16_weights_loads_exactly(vgg_file):
    path, state = vgg_file
    vgg = load_vgg16_weights(path)
    loaded = vgg.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("classifier.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())


def test_load_vgg16_weights_missing_file(tmp_path):
    path = tmp_path / "weights" / "vgg16-397923af.pth"
    with pytest.raises(CrossmodalError) as err:
        load_vgg16_weights(path)
    assert str(err.value) == (
        f"VGG16 weights {path} does not exist; download torchvision's ImageNet vgg16 state "
        f"dict https://download.pytorch.org/models/vgg16-397923af.pth and place it at that "
        f"path")


def test_load_vgg16_weights_refuses_a_wrong_file(vgg_file, tmp_path):
    path, state = vgg_file
    del state["features.28.bias"]
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(CrossmodalError, match=re.escape(
            f"{wrong} is not a torchvision vgg16 state dict: missing ['features.28.bias'], "
            f"unexpected [], wrong shapes ['features.0.weight']")):
        load_vgg16_weights(wrong)
    torch.save(torch.zeros(3), wrong)
    with pytest.raises(CrossmodalError, match="holds a Tensor, not a state dict"):
        load_vgg16_weights(wrong)


@pytest.fixture(scope="module")
def perceptual():
    torch.manual_seed(0)
    return PerceptualLoss(VGG16())


def test_perceptual_loss_values_and_gradients(perceptual):
    target = F.normalize(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
                         dim=1)
    assert perceptual(target, target.clone()) == 0
    prediction = F.normalize(target + 0.3 * torch.randn(2, 3, 32, 32), dim=1).requires_grad_()
    loss = perceptual(prediction, target)
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in perceptual.vgg.parameters())


def test_perceptual_loss_keeps_vgg_in_eval_mode(perceptual):
    perceptual.train()
    assert perceptual.training and not perceptual.vgg.training
    assert not any(perceptual.vgg.features[i].training for i in range(31))
    perceptual.eval()


# --------------------------------------------------------------------------- config, build

def test_config_selects_pix2pix():
    assert PIX2PIX not in VARIANTS and MODEL_VARIANTS == (*VARIANTS, PIX2PIX)
    config = config_from_dict({"model": {"variant": "pix2pix", "pix2pix_width": 16}}).model
    assert (config.pix2pix_width, config.discriminator_width, config.discriminator_layers) == (
        16, 64, 3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert isinstance(build_network(config), Pix2PixGenerator)
    assert isinstance(build_network(ModelConfig(variant="plain_unet")), CrossModalNet)
    # The cross-modal fields are irrelevant to pix2pix, so not checked.
    ModelConfig(variant=PIX2PIX, trunk_width=0, normal_decoder_widths=(1,))


@pytest.mark.parametrize("changes, message", [
    ({"pix2pix_width": 0}, "model.pix2pix_width must be positive, got 0"),
    ({"discriminator_width": 0}, "model.discriminator_width must be positive, got 0"),
    ({"discriminator_layers": 0}, "model.discriminator_layers must be positive, got 0"),
    ({"imagenet_weights": "resnet18.pth"}, "model.imagenet_weights initialises the "
                                           "cross-modal ResNet-18 trunks"),
])
def test_config_rejects_bad_pix2pix_fields(changes, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ModelConfig(variant=PIX2PIX, **changes)


def test_constructors_refuse_the_other_family():
    with pytest.raises(InputError, match="not a cross-modal variant .*build_network"):
        CrossModalNet(ModelConfig(variant=PIX2PIX))
    with pytest.raises(InputError, match="'full' is not 'pix2pix'"):
        Pix2PixGenerator(ModelConfig())


@pytest.fixture(scope="module")
def checkpoint(generator):
    """An in-memory checkpoint of the tiny generator, as eval and export take it."""
    return {"config": {"model": generator.config.to_dict(), "data": {"image_size": 64}},
            "model": generator.state_dict()}


def test_build_model_rebuilds_the_generator(tmp_path, generator):
    path = save_checkpoint(tmp_path / "p.pt", model=generator,
                           config={"model": generator.config.to_dict(),
                                   "data": {"image_size": 64}})
    rebuilt = build_model(load_checkpoint(path))
    assert isinstance(rebuilt, Pix2PixGenerator) and not rebuilt.training
    assert rebuilt.config == generator.config
    x = random_image(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["normals"], generator(x)["normals"])


def test_normal_predictor_runs_the_generator(checkpoint, generator):
    predictor = NormalPredictor.from_checkpoint(checkpoint, device="cpu")
    images = random_image(3, 3, 64, 64, seed=2)
    got = predictor(images)
    with torch.no_grad():
        expected = generator(images)["normals"]
    assert torch.allclose(got, expected, atol=1e-5)
    # Other crop sizes are resized to the trained 64 px and back, as for CrossModalNet.
    assert predictor(random_image(1, 3, 48, 48)).shape == (1, 3, 48, 48)


def test_onnx_export_matches_torch(tmp_path, checkpoint):
    pytest.importorskip("onnxruntime")
    from crossmodal.onnx_export import OnnxImageToNormal, export_onnx, verify_onnx

    path = export_onnx(checkpoint, tmp_path / "pix2pix.onnx")
    assert OnnxImageToNormal(path).metadata["variant"] == PIX2PIX
    assert verify_onnx(path, checkpoint, batch_size=3) < 1e-4
