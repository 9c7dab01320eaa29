"""train.py's presets: named sets of defaults (``--preset NAME``) that other options override, each with the history
of the weights it made. ``seed`` is the original run; ``cpu-robust-crops`` made the shipped ``weights/``."""

from __future__ import annotations

from typing import Any

# The robust recipe (all three datasets); cpu-robust runs it from the HSD-only model, cpu-robust-384 refines it.
ROBUST: dict[str, Any] = {
    "arch": "effnet_unet",
    "epochs": 16,
    "ndf": 32,
    "aug": "robust",
    "paste_p": 0.5,
    "composite_p": 0.0,
    "datasets": "Human-Segmentation-Dataset:train:0.5,PennFudanPed:train:0.3,Negatives:train:0.2",
    "val_datasets": "Human-Segmentation-Dataset,PennFudanPed,Negatives",
    "epoch_samples": 480,
    "presence_weight": 1.0,
    "gan_weight": 0.0,  # L1 + Dice: matched the GAN + L1 run epoch for epoch at 2/3 of its cost (README, Ablations)
    "dice_weight": 50.0,
    "real_label": 0.9,
    "lr": 1e-4,
    "lr_decay_every": 1,
    "lr_decay_g": 0.88,
    "lr_decay_d": 0.88,
    "batch_size": 8,
    "tune_inference": True,
    "tune_max_size": 384,  # no slower per photo than the previous shipped setting (384 + flip)
    "init_from": "weights/hsd-lite0/",
}

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    # The previous shipped weights (weights/hsd-lite0/): transfer-learning U-Net on the Human Segmentation Dataset.
    "cpu": {
        "arch": "effnet_unet",
        "epochs": 35,
        "ndf": 32,
        "aug": "strong",
        "composite_p": 0.3,
        "real_label": 0.9,
        "lr_decay_every": 1,
        "lr_decay_g": 0.95,
        "lr_decay_d": 0.95,
        "batch_size": 8,
        "tune_inference": True,
    },
    # All three datasets, copy-paste, the presence head; fine-tunes the HSD-only cpu model. Made weights/robust-256/.
    "cpu-robust": ROBUST,
    # cpu-robust's model fine-tuned at 384 px, the size it is served at (inference at 384 beat 256 by 0.03 val mIoU).
    "cpu-robust-384": {
        **ROBUST,
        "epochs": 8,
        "size": 384,
        "lr": 5e-5,
        "lr_decay_g": 0.85,
        "lr_decay_d": 0.85,
        "init_from": "weights/robust-256/",
    },
    # cpu-robust's model fine-tuned with person-free close-ups cropped from the training photos' backgrounds
    # (object-scale negatives: the DAVIS negatives are wide scenes), the presence head's BCE weighted 10 (at 1 it
    # missed a quarter of the val people pasted into scenes without people; 30 cost val mIoU), and the scene prior.
    # Made the shipped weights/ (weights/config.json records preset cpu-robust-crops).
    "cpu-robust-crops": {
        **ROBUST,
        "epochs": 8,
        "crop_negative_p": 0.25,
        "presence_weight": 10.0,
        "scene_prior": True,
        "lr": 5e-5,
        "lr_decay_g": 0.85,
        "lr_decay_d": 0.85,
        "init_from": "weights/robust-256/",
    },
    # The shipped cpu-robust-crops model fine-tuned with close-ups of the Negatives frames' subjects too (animals and
    # cars filling the frame: photos of a pet's face came back as a person), the Negatives drawn more often. Not
    # shipped: it cost val mIoU and changed no answer on the foreign photos (README, Ablations).
    "cpu-robust-closeups": {
        **ROBUST,
        "epochs": 8,
        "datasets": "Human-Segmentation-Dataset:train:0.45,PennFudanPed:train:0.25,Negatives:train:0.3",
        "crop_negative_p": 0.25,
        "subject_crop_p": 0.6,
        "lr": 5e-5,
        "lr_decay_g": 0.85,
        "lr_decay_d": 0.85,
        "init_from": "weights/",  # the shipped model (its run started from the cpu-robust-crops weights of 6b46573)
    },
    # The from-scratch pix2pix U-Net at a width a CPU can train.
    "cpu-pix2pix": {"ngf": 32, "ndf": 32, "epochs": 20, "aug": "strong", "composite_p": 0.3, "real_label": 0.9},
}
