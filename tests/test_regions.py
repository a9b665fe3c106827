"""Dense targets for the training-only region head: names read, regions placed on the detected
landmarks, masks moved with the pixels, and the loss counting only what is known."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from runtime.preprocessing import PreprocessSettings
from training.augment import Augment, AugmentConfig
from training.data import CropCache, CropDataset, Sample
from training.regions import FAKE, REAL, UNKNOWN, dense_loss, edit_mask, target_mask


def test_edit_mask_is_read_from_hand_edit_names_only():
    assert edit_mask("photoshop/fake/easy_104_1000.jpg") == "1000"
    assert edit_mask("mid_7_0011.png") == "0011"
    assert edit_mask("hard_9_111.jpg") == ""  # named as a hand edit, mask unreadable: nothing known
    assert edit_mask("faces/fake/00AUP94LQS.jpg") is None
    assert edit_mask("real_00002.jpg") is None


@pytest.fixture(scope="module")
def astronaut_crops(tmp_path_factory):
    """The astronaut's face as a real photo, a GAN-style fake and a left-eye hand edit (file names
    decide), cached through the serving preprocessor with native crops that reach past the image."""
    root = tmp_path_factory.mktemp("regions")
    # no pure-black pixel in the photo, so black in a crop means "outside the image"
    resized = Image.fromarray(skdata.astronaut()).resize((200, 200), Image.LANCZOS)
    portrait = Image.fromarray(np.maximum(np.asarray(resized), 1))
    paths = {"real": root / "real" / "photo.png", "whole": root / "fake" / "generated.png",
             "edit": root / "fake" / "easy_1_1000.png"}
    for path in paths.values():
        path.parent.mkdir(exist_ok=True)
    portrait.save(paths["real"])
    portrait.save(paths["whole"])
    portrait.save(paths["edit"])  # same pixels, the name decides
    settings = PreprocessSettings(input_size=96, margin=0.3, crop="native")
    samples = [Sample(paths["real"], 0), Sample(paths["whole"], 1), Sample(paths["edit"], 1)]
    crops, skipped = CropCache(root / "cache", settings).prepare(samples)
    assert not skipped and all(c.face_found and len(c.landmarks) == 5 for c in crops)
    return dict(zip(paths, crops))


def load(item):
    with Image.open(item.crop) as f:
        return np.asarray(f.convert("RGB"))


def test_whole_image_labels_cover_the_image_and_nothing_past_its_edges(astronaut_crops):
    for kind, value in (("real", REAL), ("whole", FAKE)):
        item = astronaut_crops[kind]
        pixels = load(item)
        outside = (pixels == 0).all(axis=2)
        assert outside.any()  # the 192 px context crop reaches past the 200 px photo
        mask = np.asarray(target_mask(item, pixels.shape[0]))
        assert (mask[outside] == UNKNOWN).all()
        assert (mask[~outside] == value).mean() > 0.99  # a one-pixel rounding seam at most


def test_a_hand_edit_marks_only_its_edited_region_on_the_landmarks(astronaut_crops):
    item = astronaut_crops["edit"]
    size = load(item).shape[0]
    mask = np.asarray(target_mask(item, size))
    left, top, right, _ = item.window
    scale = size / (right - left)
    eyes = sorted(item.landmarks[:2])
    to_crop = lambda p: (round((p[1] - top) * scale), round((p[0] - left) * scale))  # (row, column)
    assert mask[to_crop(eyes[0])] == FAKE  # "1000": the eye on the image's left
    assert mask[to_crop(eyes[1])] == UNKNOWN
    assert mask[to_crop(item.landmarks[2])] == UNKNOWN  # nose
    assert not (mask == REAL).any()  # nothing of an edited photo is claimed real
    assert 0 < (mask == FAKE).mean() < 0.1


def test_the_mask_moves_with_the_pixels(astronaut_crops):
    """Flip, shift and zoom-out cut the target exactly where they cut the image: the black border
    of the crop stays where the target says 'unknown'."""
    item = astronaut_crops["real"]
    augment = Augment(AugmentConfig(flip=1.0, shift=8, zoom_out=1.0, zoom_out_factor=(0.7, 0.9), jitter=0.0,
                                    blur=0.0, jpeg=0.0, crop_scale=(1.0, 1.0)))
    torch.manual_seed(3)
    x, label, mask = CropDataset([item], augment, view=augment.view, dense_targets=True)[0]
    assert label == 0 and mask.shape == x.shape[1:] == (96, 96)
    black = (x == 0).all(dim=0)
    unknown = mask == UNKNOWN
    assert unknown.any()
    # bicubic zoom blurs the border by a pixel or two; away from it the two agree
    assert (black & ~unknown).float().mean() < 0.01 and (unknown & ~black).float().mean() < 0.03


def test_dense_loss_uses_known_cells_only_and_weighs_images_equally():
    masks = torch.full((2, 8, 8), UNKNOWN, dtype=torch.uint8)
    masks[0] = REAL  # a real image: four known cells of 4x4 pixels
    masks[1, :4, :4] = FAKE  # a hand edit: one fake cell, the rest unknown
    right = torch.tensor([[[-20.0, -20.0], [-20.0, -20.0]], [[20.0, 0.0], [0.0, 0.0]]])
    assert dense_loss(right, masks).item() < 1e-6
    anything = right.clone()
    anything[1, 1, 1] = 50.0  # an unknown cell: not counted
    assert dense_loss(anything, masks).item() < 1e-6
    wrong = right.clone()
    wrong[1, 0, 0] = -20.0  # the one known fake cell called real: its image's loss is 20, the batch's 10
    assert dense_loss(wrong, masks).item() == pytest.approx(10.0, rel=1e-3)
    nothing = torch.full((1, 8, 8), UNKNOWN, dtype=torch.uint8)
    assert dense_loss(right[:1], nothing).item() == 0.0
