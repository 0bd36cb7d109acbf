"""Policy "paper" crops the stored image as the authors' script does (docs/fidelity.md row 20).

``main_sibnn_learn.py`` has no Resize: train = ``RandomCrop(224)`` + ``RandomHorizontalFlip()`` of the image as
stored, val = ``CenterCrop(224)``. Here train is likewise a 224 window of the stored image at scale 1 (possibly
mirrored), and val resizes the short side to 256 first, which on an image stored at short side 256 (what
``sibnn.data.prepare`` writes) changes nothing, so val is the stored image's centre crop. Lossless PNGs of noise make
every pixel identifiable.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sibnn.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetLoader

W, H, CROP = 300, 256, 224   # short side 256, as prepared


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("paper_crop")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        d = base / split / "n00000000"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return base


def _pixels(x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (3, h, w) float → (h, w, 3) uint8 values."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (((x * std + mean) * 255).round().clamp(0, 255)).to(torch.uint8).permute(1, 2, 0).numpy()


def _stored(root: Path, split: str, key: str) -> np.ndarray:
    return np.asarray(Image.open(root / split / "n00000000" / f"{key}.png").convert("RGB"))


def _window_of(crop: np.ndarray, image: np.ndarray) -> tuple[int, int, bool] | None:
    """(top, left, mirrored) of the window of ``image`` equal to ``crop``, or None."""
    patches = np.lib.stride_tricks.sliding_window_view(image, (4, 4, 3)).reshape(
        image.shape[0] - 3, image.shape[1] - 3, -1)
    for mirrored in (False, True):
        c = crop[:, ::-1] if mirrored else crop
        # candidates by the crop's top-left 4×4 patch, then the whole window
        for top, left in np.argwhere((patches == c[:4, :4].reshape(-1)).all(-1)):
            if top + CROP <= image.shape[0] and left + CROP <= image.shape[1] and np.array_equal(
                    image[top:top + CROP, left:left + CROP], c):
                return int(top), int(left), mirrored
    return None


def test_train_crop_is_a_window_of_the_stored_image_without_resizing(root):
    ld = ImageNetLoader(root, "train", 4, device="cpu", policy="paper", num_threads=1, return_index=True, seed=3)
    found = []
    for _ in range(2):   # two epochs: eight crops
        for x, _, idx in ld:
            for k in range(len(idx)):
                where = _window_of(_pixels(x[k]), _stored(root, "train", ld.sample_keys[idx[k]]))
                assert where is not None, "the crop is not a scale-1 window of the stored image"
                found.append(where)
    assert len({(t, l) for t, l, _ in found}) > 1, "the crop position is random"


def test_val_is_the_centre_crop_of_an_image_stored_at_short_side_256(root):
    ld = ImageNetLoader(root, "val", 2, device="cpu", policy="paper", num_threads=1, return_index=True)
    x, _, idx = next(iter(ld))
    top, left = (H - CROP) // 2, (W - CROP) // 2
    for k in range(len(idx)):
        image = _stored(root, "val", ld.sample_keys[idx[k]])
        diff = np.abs(_pixels(x[k]).astype(int) - image[top:top + CROP, left:left + CROP].astype(int))
        assert diff.max() <= 1, "resize_shorter=256 on a short-side-256 image leaves it as stored"
