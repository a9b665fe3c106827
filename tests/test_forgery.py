"""Self-made fakes (training.forgery, training.simulator), source-blind sampling and the uncertain band."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from runtime.verdict import band
from training.data import CachedCrop, CropDataset
from training.forgery import Forger, ForgeryOdds, blend_target, context_points, region_blend
from training.kinds import FAKE_KINDS, NO_KIND, kind_target
from training.metrics import band_cutoffs, band_shares
from training.regions import FAKE, REAL, UNKNOWN
from training.sampling import draw_weights, hold_out, unique_reals
from training.simulator import ArtefactSimulator, SimulatorBank, build_bank, held_out_psnr, psnr, train_simulator

# the astronaut's five landmarks (eyes, nose tip, mouth corners) in the 256 px picture, by eye
ASTRONAUT_POINTS = np.array([(180, 95), (224, 92), (208, 118), (184, 142), (218, 140)], np.float32)


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skdata.astronaut()).resize((256, 256))


def test_region_blend_changes_a_facial_region_only_and_is_seeded(astronaut):
    fake, mask = region_blend(astronaut, ASTRONAUT_POINTS, seed=4)
    again, _ = region_blend(astronaut, ASTRONAUT_POINTS, seed=4)
    assert fake.size == astronaut.size and np.array_equal(np.asarray(fake), np.asarray(again))
    diff = np.abs(np.asarray(fake, np.int16) - np.asarray(astronaut, np.int16)).sum(2)
    assert mask.min() >= 0 and mask.max() <= 1 and mask.max() > 0.5
    assert diff[mask > 0.5].mean() > 3  # the pasted region shows ...
    assert diff[mask == 0].max() == 0  # ... and nothing outside the mask moved
    ys, xs = np.nonzero(mask > 0.5)
    assert 150 < xs.mean() < 250 and 60 < ys.mean() < 170  # on the face, not on the suit or the flag


def test_region_blend_from_a_donor_face_aligns_it(astronaut):
    donor = astronaut.transpose(Image.FLIP_LEFT_RIGHT).resize((200, 200))
    flipped = np.array([(256 - x, y) for x, y in ASTRONAUT_POINTS], np.float32)[[1, 0, 2, 4, 3]] * (200 / 256)
    results = [region_blend(astronaut, ASTRONAUT_POINTS, seed, donor=(donor, flipped))[0] for seed in range(6)]
    assert len({np.asarray(r).tobytes() for r in results}) == 6


def test_blend_target_marks_the_paste_fake_and_the_rest_real():
    mask = np.zeros((32, 32), np.float32)
    mask[8:16, 8:16] = 1.0
    mask[16:18, 8:16] = 0.3
    target = np.asarray(blend_target(mask))
    assert (target[8:16, 8:16] == FAKE).all() and (target[16:18, 8:16] == UNKNOWN).all() and target[0, 0] == REAL


def test_context_points_follow_the_cached_window():
    points = context_points((10, 20, 110, 120), [(60, 70)] * 5, side=200)
    assert np.allclose(points, [(100, 100)] * 5)


def test_forger_draws_only_for_reals_and_checks_its_odds():
    forger = Forger(ForgeryOdds(sbi=0.3, region=0.3), simulators=None)
    torch.manual_seed(0)
    draws = [forger.choose(0) for _ in range(2000)]
    assert {d for d in draws} == {"sbi", "region", None}
    assert abs(draws.count("sbi") / 2000 - 0.3) < 0.05 and abs(draws.count(None) / 2000 - 0.4) < 0.05
    assert all(forger.choose(1) is None for _ in range(50))
    with pytest.raises(ValueError, match="more than 1"):
        ForgeryOdds(sbi=0.6, region=0.6)
    with pytest.raises(ValueError, match="simulator"):
        Forger(ForgeryOdds(simulator=0.5))
    assert Forger(ForgeryOdds(simulator=0.5), control="blur").choose(0) in ("simulator", None)


def test_kind_targets_of_self_made_fakes():
    kinds = {"faces": "gan"}
    assert kind_target(kinds, "faces", 0, 1, "sbi") == FAKE_KINDS.index("face_swap")
    assert kind_target(kinds, "faces", 0, 1, "region") == FAKE_KINDS.index("hand_edit")
    assert kind_target(kinds, "faces", 0, 1, "simulator") == NO_KIND
    assert kind_target(kinds, "faces", 1, 1, None) == FAKE_KINDS.index("gan")
    assert kind_target(kinds, "faces", 0, 0, None) == NO_KIND


def cached(tmp_path, image, name, label=0, dataset="a", points=ASTRONAUT_POINTS, input_size=128):
    path = tmp_path / f"{name}.png"
    image.save(path)
    return CachedCrop(path, label, path, True, dataset, input_size, (0, 0, 256, 256), (256, 256), tuple(map(tuple, points)))


def test_dataset_forges_reals_with_region_blends_and_gives_their_targets(tmp_path, astronaut):
    real = cached(tmp_path, astronaut, "real")
    fake = cached(tmp_path, astronaut, "fake", label=1)
    kind_of = lambda item, label, forgery: kind_target({"a": "gan"}, item.dataset, item.label, label, forgery)  # noqa: E731
    dataset = CropDataset([real, fake], forger=Forger(ForgeryOdds(region=1.0)), kind_of=kind_of)
    torch.manual_seed(0)
    x, y, kind = dataset[0]
    assert x.shape == (3, 128, 128) and y.item() == 1.0 and kind.item() == FAKE_KINDS.index("hand_edit")
    assert not torch.equal(x, CropDataset([real])[0][0])  # the centre view of a forged context
    assert dataset[1][1].item() == 1.0 and dataset[1][2].item() == FAKE_KINDS.index("gan")  # a fake stays as it is

    whole = cached(tmp_path, astronaut, "whole", input_size=256)  # the view is the whole crop: the face's right half too
    dense = CropDataset([whole], forger=Forger(ForgeryOdds(region=1.0)), dense_targets=True)
    _, _, mask = dense[0]
    assert mask.shape == (256, 256) and {FAKE, REAL} <= set(mask.unique().tolist())


def test_simulator_learns_a_sharp_reconstruction_and_is_cached(tmp_path, astronaut):
    image = np.asarray(astronaut)
    tiles = [image[y : y + 128, x : x + 128] for y in (0, 128) for x in (0, 128)]
    untrained = held_out_psnr(ArtefactSimulator("transposed", 8).eval(), tiles[:1])
    model, value = train_simulator(tiles[1:], tiles[:1], "transposed", width=8, steps=150, log=lambda _: None)
    assert value > untrained + 5  # it learns to redraw the picture
    out = model(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 3, 64, 48)

    paths = []
    for i, tile in enumerate(tiles):
        paths.append((f"{i:02d}", tmp_path / f"{i}.png"))
        Image.fromarray(tile).save(paths[-1][1])
    folder = build_bank(paths, tmp_path / "sim", styles=("nearest", "bilinear"), width=8, steps=20, log=lambda _: None)
    stamp = (folder / "simulators.json").stat().st_mtime_ns
    assert build_bank(paths, tmp_path / "sim", styles=("nearest", "bilinear"), width=8, steps=20) == folder
    assert (folder / "simulators.json").stat().st_mtime_ns == stamp  # found, not trained again
    assert build_bank(paths[:3], tmp_path / "sim", styles=("nearest", "bilinear"), width=8, steps=20,
                      log=lambda _: None) != folder  # other reals, another simulator
    bank = SimulatorBank.load(folder)
    crop = astronaut.resize((130, 130))  # a side that is not a multiple of 4 keeps its last real pixels
    redrawn = bank.reconstruct(crop, 1)
    assert redrawn.size == crop.size and np.array_equal(np.asarray(redrawn)[128:], np.asarray(crop)[128:])
    assert psnr(torch.from_numpy(np.asarray(redrawn, np.float32) / 255), torch.from_numpy(np.asarray(crop, np.float32) / 255)) > 10


def test_forgery_control_replaces_simulator_fakes_by_blur(astronaut):
    forger = Forger(ForgeryOdds(simulator=1.0), control="blur")
    out = forger.after_view("simulator", astronaut)
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(astronaut, np.int16))
    assert 0 < diff.mean() < 20


def crop_item(dataset, label, name):
    return CachedCrop(f"/x/{name}.png", label, f"/x/{name}.jpg", True, dataset)


def test_pooled_reals_are_drawn_as_one_pool_by_root_size():
    items = ([crop_item("a", 0, f"a{i}") for i in range(100)] + [crop_item("a", 1, f"af{i}") for i in range(100)]
             + [crop_item("b", 0, f"b{i}") for i in range(400)] + [crop_item("c", 1, f"cf{i}") for i in range(25)])
    w = draw_weights(items, 0.5, pool_reals=True, real_share=0.6).numpy()
    w = w / w.sum()
    labels = np.array([i.label for i in items])
    roots = np.array([i.dataset for i in items])
    assert w[labels == 0].sum() == pytest.approx(0.6) and w[labels == 1].sum() == pytest.approx(0.4)
    # reals: root a 10 / (10 + 20) of the real share, b 20 / 30; fakes: a 10 / (10 + 5), c 5 / 15
    assert w[(labels == 0) & (roots == "a")].sum() == pytest.approx(0.6 / 3)
    assert w[(labels == 1) & (roots == "c")].sum() == pytest.approx(0.4 / 3)
    curriculum = draw_weights(items, 0.5, pool_reals=True, real_share=0.6, downloaded_fakes=False).numpy()
    assert curriculum[labels == 1].sum() == 0 and curriculum[labels == 0].sum() > 0
    plain = draw_weights(items, 1.0).numpy()
    assert np.allclose(plain, plain[0])  # power 1: every image alike, as before


def test_holding_out_a_kind_keeps_its_reals_when_asked_and_reals_count_once():
    items = [crop_item("a", 0, "r1"), crop_item("a", 1, "f1"), crop_item("b", 0, "r2"), crop_item("b", 1, "f2")]
    assert hold_out(items, ["a"], keep_reals=True) == [items[0], items[2], items[3]]
    assert hold_out(items, ["a"], keep_reals=False) == items[2:]
    twice = items + [crop_item("c", 0, "r1")]  # a fake-only root paired with a's reals
    assert unique_reals(twice) == items


def test_band_cutoffs_hold_their_precision_on_each_side():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(2000), np.ones(2000)]
    p = np.r_[rng.beta(2, 5, 2000), rng.beta(5, 2, 2000)]
    cut = band_cutoffs(y, p, threshold=0.5)
    assert cut["likely_real_below"] <= 0.5 <= cut["likely_fake_from"]
    assert y[p >= cut["likely_fake_from"]].mean() >= 0.95  # precision of "likely fake"
    assert 1 - y[p < cut["likely_real_below"]].mean() >= 0.95  # precision of "likely real"
    shares = band_shares(y, p, cut)
    assert sum(s["share"] for s in shares.values()) == pytest.approx(1.0)
    assert shares["uncertain"]["fake_share"] == pytest.approx(y[(p >= cut["likely_real_below"]) & (p < cut["likely_fake_from"])].mean())
    # a model that cannot tell them apart has no "likely" side at all
    flat = band_cutoffs(np.r_[np.zeros(50), np.ones(50)], np.full(100, 0.5), 0.5)
    assert (flat["likely_real_below"], flat["likely_fake_from"]) == (0.0, 1.0)


def test_band_of_an_answer():
    cut = {"likely_real_below": 0.2, "likely_fake_from": 0.8}
    assert [band(p, cut) for p in (0.1, 0.2, 0.5, 0.8, 0.95)] == ["likely_real", "uncertain", "uncertain", "likely_fake", "likely_fake"]
    assert band(0.99, cut, face_found=False) == "no_face"
    assert band(0.99, None) == "uncertain"  # weights without cut-offs never claim a likely side
