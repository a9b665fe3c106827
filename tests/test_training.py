"""End-to-end training on images generated here: it learns, it resumes exactly, K-fold re-initialises."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from training.evaluate import main as evaluate_main
from training.config import TrainConfig
from training.sampling import prepare_crops
from training.train import Trainer, train
from runtime.preprocessing import PreprocessSettings
from runtime.weights import load_weights

# a tiny variant of the small model so that CPU training takes seconds
TINY = {"input_size": 64, "entry_channels": [8, 16], "entry_blocks": [24, 32, 48], "middle_channels": 48,
        "middle_blocks": 1, "exit_channels": [64, 96]}
NO_LOSSY_AUG = {"blur": 0.0, "jpeg": 0.0, "crop_scale": [1.0, 1.0]}  # resampling would blur the grid


def config(tmp_path, **changes) -> TrainConfig:
    base = dict(size="small", model=TINY, epochs=12, batch_size=8, lr=3e-3, warmup_epochs=0.5, patience=10,
                threads=1, cache_dir=str(tmp_path / "cache"), val_fraction=0.25, test_fraction=0.25, augment=NO_LOSSY_AUG)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Real: smooth random textures. Fake: the same kind plus a faint periodic grid (period 4 px),
    like the upsampling trace many generators leave; easy to see in the frequency channel."""
    root = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    yy, xx = np.indices((64, 64))
    grid = (np.sin(np.pi * xx / 2) + np.sin(np.pi * yy / 2))[..., None] * 8.0
    for name, n in [("real", 32), ("fake", 32)]:
        (root / name).mkdir()
        for i in range(n):
            coarse = rng.uniform(40, 215, (8, 8, 3))
            smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((64, 64), Image.BICUBIC), np.float64)
            pixels = smooth + (grid if name == "fake" else 0) + rng.normal(0, 2, smooth.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    (root / "fake" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xdb" + bytes(range(256)) * 3)
    return root


def test_short_training_learns_and_skips_the_corrupt_image(generated, tmp_path, capsys):
    cfg = config(tmp_path)
    meta = train(cfg, generated, tmp_path / "run", output=tmp_path / "out" / "w.safetensors", command="pytest")
    assert "corrupt.jpg: not_an_image" in capsys.readouterr().err
    assert [p.endswith("corrupt.jpg") for p in meta["data"]["skipped"]] == [True]
    assert meta["metrics"]["val"]["roc_auc"] > 0.85
    assert meta["metrics"]["test"]["roc_auc"] > 0.85
    assert 0.0 < meta["threshold"] < 1.0

    model, saved = load_weights(tmp_path / "out" / "w.safetensors")
    assert saved["threshold"] == meta["threshold"]
    assert saved["calibration"]["method"] == "platt" and saved["calibration"]["scale"] > 0
    # the keys the serving handler reads to rebuild the same preprocessing
    assert saved["preprocessing"] == {"input_size": 64, "margin": 0.3, "crop": "resize", "score_threshold": 0.8, "nms_threshold": 0.4, "max_side": 640, "min_face": 0, "coarse_side": 0}
    assert saved["labels"] == {"0": "real", "1": "fake"}
    lines = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 1 + cfg.epochs

    # the evaluation command reproduces the test metrics from the same split and writes its plots
    report_dir = tmp_path / "eval"
    evaluate_main(["--weights", str(tmp_path / "out" / "w.safetensors"), "--data", str(generated),
                   "--out", str(report_dir), "--cache-dir", cfg.cache_dir, "--threads", "1"])
    report = json.loads((report_dir / "metrics.json").read_text())
    assert report["roc_auc"] == pytest.approx(meta["metrics"]["test"]["roc_auc"])
    assert report["confusion_matrix"] == meta["metrics"]["test"]["confusion_matrix"]
    for name in ("roc.png", "confusion_matrix.png", "training_curves.png"):
        with Image.open(report_dir / name) as png:
            assert png.format == "PNG" and png.width > 200

    # calibrating weights afterwards reproduces what training fitted on the same validation split
    import shutil

    from training.calibrate import calibrate

    copy = tmp_path / "copy" / "w.safetensors"
    copy.parent.mkdir()
    shutil.copy(tmp_path / "out" / "w.safetensors", copy)
    plain = {**saved}
    del plain["calibration"]
    copy.with_suffix(".json").write_text(json.dumps(plain))
    refitted = calibrate(copy, generated, cache_dir=cfg.cache_dir, threads=1)
    for key in ("scale", "shift"):
        assert refitted["calibration"][key] == pytest.approx(saved["calibration"][key], rel=1e-4, abs=1e-4)
    assert refitted["threshold"] == pytest.approx(saved["threshold"], abs=1e-6)

    # the validation P(fake) histogram that `records_cli quality` measures drift against; weights
    # without it get it from --reference-only, nothing else in their metadata changed
    from runtime.drift import REFERENCE_KEY
    from training.calibrate import add_reference

    reference = saved[REFERENCE_KEY]
    assert reference["n"] == sum(meta["data"]["counts"]["val"].values()) and len(reference["counts"]) == 10
    without = {k: v for k, v in saved.items() if k != REFERENCE_KEY}
    copy.with_suffix(".json").write_text(json.dumps(without))
    added = add_reference(copy, generated, cache_dir=cfg.cache_dir, threads=1)
    assert added[REFERENCE_KEY] == reference and {k: v for k, v in added.items() if k != REFERENCE_KEY} == without

    # other serving settings for the same weights: written for serving, calibrated on crops made with them
    served = calibrate(copy, generated, cache_dir=cfg.cache_dir, threads=1, preprocessing={"max_side": 320})
    _, reloaded = load_weights(copy)
    assert PreprocessSettings.from_metadata(reloaded).max_side == 320 == served["preprocessing"]["max_side"]
    assert reloaded["calibration"] == served["calibration"]


def test_resume_continues_exactly(generated, tmp_path):
    cfg = config(tmp_path, epochs=2, augment={"sbi": 0.3})  # every augmentation on, SBI included
    crops, _, _ = prepare_crops(cfg, generated)

    straight = Trainer(cfg, crops["train"], crops["val"], tmp_path / "straight", seed=0)
    straight.fit()

    interrupted = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    interrupted.commands = ["first"]
    interrupted.fit(stop_after=1)
    assert interrupted.state["epoch"] == 1
    resumed = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)  # a new process, in effect
    resumed.commands = ["second"]
    resumed.fit(resume=True)
    assert resumed.state["epoch"] == 2
    assert resumed.commands == ["first", "second"]

    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    assert (tmp_path / "straight" / "log.csv").read_text().count("\n") == (tmp_path / "resumed" / "log.csv").read_text().count("\n") == 3


def test_kfold_reinitialises_each_fold(generated, tmp_path, monkeypatch):
    cfg = config(tmp_path, epochs=1, folds=2)
    # record the weights each fold starts training from
    starts, fit = [], Trainer.fit

    def recording_fit(self, *args, **kwargs):
        starts.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    report = train(cfg, generated, tmp_path / "cv")
    assert len(report["folds"]) == 2 and len(starts) == 2
    summary = report["summary"]["roc_auc"]
    aucs = [f["roc_auc"] for f in report["folds"]]
    assert summary["mean"] == pytest.approx(np.mean(aucs)) and summary["std"] == pytest.approx(np.std(aucs))

    # fold 2 starts from a fresh initialisation (its own seed), not from fold 1's trained weights
    crops, _, _ = prepare_crops(cfg, generated)
    pool = crops["train"] + crops["val"]
    fresh = Trainer(cfg, pool, [], tmp_path / "init2", seed=cfg.seed + 2).model.state_dict()
    fold1_trained = load_file(str(tmp_path / "cv" / "fold1" / "last.safetensors"))
    assert all(torch.equal(starts[1][k], fresh[k]) for k in fresh)
    assert not torch.equal(starts[1]["classifier.weight"], fold1_trained["classifier.weight"])
    assert json.loads((tmp_path / "cv" / "folds.json").read_text())["summary"]["roc_auc"] == summary


@pytest.fixture(scope="module")
def two_roots(generated, tmp_path_factory):
    """Two data roots (two 'kinds' of data) made of the generated images, for per-dataset metrics."""
    import shutil

    parent = tmp_path_factory.mktemp("roots")
    for name in ("gan", "edits"):
        shutil.copytree(generated, parent / name, ignore=shutil.ignore_patterns("corrupt.jpg"))
    return [parent / "gan", parent / "edits"]


def test_several_roots_are_split_apart_and_reported_per_dataset(two_roots, tmp_path):
    cfg = config(tmp_path, epochs=2, balance_datasets=True)
    meta = train(cfg, two_roots, tmp_path / "run", output=tmp_path / "w.safetensors", command="pytest")
    assert set(meta["metrics"]["test"]["per_dataset_auc"]) == {"gan", "edits"}
    assert meta["data"]["counts"]["test"] == {"real": 16, "fake": 16}  # 8 + 8 from each root
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["val_auc_edits", "val_auc_gan"]

    report_dir = tmp_path / "eval"
    evaluate_main(["--weights", str(tmp_path / "w.safetensors"), "--data", *map(str, two_roots), "--out", str(report_dir),
                   "--cache-dir", cfg.cache_dir, "--threads", "1", "--robustness", "--bootstrap", "50"])
    report = json.loads((report_dir / "metrics.json").read_text())
    assert set(report["datasets"]) == {"gan", "edits", "pooled"}
    for name in ("gan", "edits"):
        assert report["datasets"][name]["roc_auc"] == pytest.approx(meta["metrics"]["test"]["per_dataset_auc"][name])
        low, high = report["datasets"][name]["roc_auc_95ci"]
        assert low <= report["datasets"][name]["roc_auc"] <= high
    from training.evaluate import PERTURBATIONS

    assert list(report["robustness"]) == list(PERTURBATIONS)
    for row in report["robustness"].values():
        for name in ("gan", "edits"):
            assert row[name]["drop"] == pytest.approx(report["datasets"][name]["roc_auc"] - row[name]["roc_auc"])
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    from training.evaluate import FACE_SCALES

    for name in ("gan", "edits"):  # the face-size sweep: scale 1 is the clean score, smaller faces are found smaller
        rows = report["face_size"][name]
        assert [r["scale"] for r in rows] == list(FACE_SCALES)
        assert rows[0]["roc_auc"] == pytest.approx(report["datasets"][name]["roc_auc"], abs=1e-6)
        assert 0.0 <= report["datasets"][name]["ece"] <= 1.0
    for name in ("roc.png", "reliability.png", "robustness.png", "confusion_matrix.png", "face_size.png"):
        with Image.open(report_dir / name) as png:
            assert png.format == "PNG"
    assert "| jpeg q75 |" in (report_dir / "report.md").read_text()

    evaluate_main(["--cross", f"both={tmp_path / 'w.safetensors'}", "--data", *map(str, two_roots), "--out",
                   str(tmp_path / "cross"), "--cache-dir", cfg.cache_dir, "--threads", "1", "--bootstrap", "20"])
    matrix = json.loads((tmp_path / "cross" / "cross_kind.json").read_text())
    assert matrix["both"]["gan"]["roc_auc"] == pytest.approx(report["datasets"]["gan"]["roc_auc"])


def test_face_family_starts_pretrained_and_stays_frozen_for_the_linear_probe(generated, tmp_path):
    from runtime.face_hybrid import RetinaFaceBackbone, load_pretrained_backbone

    cfg = config(tmp_path, size="face", model={"input_size": 64, "highpass_channels": 8, "frequency_channels": 8},
                 epochs=2, freeze_epochs=1, backbone_lr_scale=0.5, crop="native")
    crops, _, _ = prepare_crops(cfg, generated)
    trainer = Trainer(cfg, crops["train"], crops["val"], tmp_path / "run", seed=0)
    pretrained = load_pretrained_backbone(RetinaFaceBackbone()).state_dict()
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(start[f"backbone.{k}"], v) for k, v in pretrained.items())

    trainer.fit(stop_after=1)  # the linear-probe epoch: only the new layers move
    after_probe = trainer.model.state_dict()
    assert all(torch.equal(after_probe[f"backbone.{k}"], start[f"backbone.{k}"]) for k in pretrained)
    assert not torch.equal(after_probe["classifier.weight"], start["classifier.weight"])

    trainer.fit(stop_after=1)  # fine-tuning: the backbone moves too
    assert not torch.equal(trainer.model.state_dict()["backbone.stage3.1.1.0.weight"], start["backbone.stage3.1.1.0.weight"])

    # a checkpoint is evaluated with the run's crops, not the defaults
    for name in ("last", "best"):
        _, meta = load_weights(tmp_path / "run" / f"{name}.safetensors")
        assert meta["preprocessing"]["crop"] == "native" and meta["preprocessing"]["input_size"] == 64


def test_ema_is_validated_kept_and_resumed_exactly(generated, tmp_path):
    """With ema_decay the shipped weights are the moving average, not the last step's, and a
    resumed run carries the average on exactly (it lives in the checkpoint, not in the weights)."""
    cfg = config(tmp_path, epochs=2, ema_decay=0.9)
    crops, _, _ = prepare_crops(cfg, generated)
    straight = Trainer(cfg, crops["train"], crops["val"], tmp_path / "straight", seed=0)
    straight.fit()
    interrupted = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    interrupted.fit(stop_after=1)
    resumed = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    resumed.fit(resume=True)

    averaged, raw = straight.shipped.state_dict(), straight.model.state_dict()
    assert not torch.equal(averaged["classifier.weight"], raw["classifier.weight"])
    assert all(torch.equal(v, resumed.shipped.state_dict()[k]) for k, v in averaged.items())
    if straight.state["best_epoch"] == 2:  # the best checkpoint is the average at that epoch
        best = load_file(str(tmp_path / "straight" / "best.safetensors"))
        assert all(torch.equal(best[k], v.float()) for k, v in averaged.items())


def test_face_neck_widens_the_pooled_features_and_keeps_the_contract():
    from runtime.model import build_model

    plain, neck = build_model("face", input_size=64), build_model("face", input_size=64, neck_multiplier=2)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert neck.eval()(x).shape == (3,)
        assert neck.forward_features(x).shape[1] == 2 * plain.forward_features(x).shape[1]


def test_dense_region_head_trains_beside_the_model_resumes_exactly_and_is_not_shipped(generated, tmp_path):
    cfg = config(tmp_path, epochs=2, dense_loss=1.0)
    crops, _, _ = prepare_crops(cfg, generated)
    straight = Trainer(cfg, crops["train"], crops["val"], tmp_path / "straight", seed=0)
    start = {k: v.clone() for k, v in straight.dense_head.state_dict().items()}
    straight.fit()
    assert not torch.equal(straight.dense_head.state_dict()["conv.weight"], start["conv.weight"])

    interrupted = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    interrupted.fit(stop_after=1)
    resumed = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    resumed.fit(resume=True)
    assert all(torch.equal(v, resumed.dense_head.state_dict()[k]) for k, v in straight.dense_head.state_dict().items())
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the shipped weights are the model's alone: the same keys as a run without the region head
    plain = Trainer(config(tmp_path, epochs=1), crops["train"], crops["val"], tmp_path / "plain", seed=0)
    assert set(a) == set(plain.model.state_dict())


def test_split_seed_keeps_the_split_while_the_training_seed_changes(generated, tmp_path):
    def split_of(**changes):
        crops, _, _ = prepare_crops(config(tmp_path, **changes), generated)
        return {name: sorted(str(c.source) for c in items) for name, items in crops.items()}

    base = split_of(seed=0)
    assert split_of(seed=1, split_seed=0) == base
    assert split_of(seed=1)["test"] != base["test"]  # without it, the seed draws the split too


def test_evaluation_reports_hand_edits_by_difficulty():
    from pathlib import Path

    from training.data import CachedCrop
    from training.evaluate import Scored, by_edit_level

    def scored(names: list[str], labels: list[int], p: list[float]) -> Scored:
        crops = [CachedCrop(Path("c.png"), y, Path(n), True) for n, y in zip(names, labels)]
        return Scored(crops, np.array(labels), np.array(p))

    # the easy edits all score below every real photo, the hard ones above: AUC 0 and 1
    edits = scored(["r1.jpg", "r2.jpg", "easy_1_1000.jpg", "easy_2_0001.jpg", "hard_3_1111.jpg", "hard_4_0110.jpg"],
                   [0, 0, 1, 1, 1, 1], [0.5, 0.6, 0.1, 0.2, 0.8, 0.9])
    gan = scored(["00001.jpg", "AB12CD.jpg"], [0, 1], [0.2, 0.7])
    table = by_edit_level({"photoshop": edits, "faces": gan}, threshold=0.5, resamples=50)
    assert list(table) == ["photoshop"]  # GAN faces carry no difficulty
    assert list(table["photoshop"]) == ["easy", "hard"]
    assert table["photoshop"]["easy"]["roc_auc"] == 0.0 and table["photoshop"]["easy"]["n_fake"] == 2
    assert table["photoshop"]["hard"]["roc_auc"] == 1.0 and table["photoshop"]["hard"]["n_real"] == 2


def test_face_mirror_stream_sees_only_asymmetry():
    from runtime.face_hybrid import load_pretrained_backbone
    from runtime.model import build_model

    model = build_model("face", input_size=64, mirror_channels=8).eval()
    load_pretrained_backbone(model.backbone)
    half = torch.rand(2, 3, 64, 32)
    symmetric = torch.cat([half, half.flip(3)], dim=3)
    one_eye = symmetric.clone()
    one_eye[:, :, 20:28, 8:16] = torch.rand(2, 3, 8, 8)  # a patch on one side only
    with torch.no_grad():
        assert model(symmetric).shape == (2,)
        for x, asymmetric in ((symmetric, False), (one_eye, True)):
            _, both = model.to_stride16(torch.cat([x, x.flip(3)]))
            difference = (both[:2] - both[2:]).abs().amax().item()
            assert (difference > 0.01) if asymmetric else difference == 0.0


def test_train_fraction_keeps_a_share_of_each_class_and_leaves_val_and_test_alone(generated, tmp_path):
    full, _, _ = prepare_crops(config(tmp_path), generated)
    half, _, _ = prepare_crops(config(tmp_path, train_fraction=0.5), generated)
    again, _, _ = prepare_crops(config(tmp_path, train_fraction=0.5), generated)
    assert half["val"] == full["val"] and half["test"] == full["test"]
    assert half["train"] == again["train"]  # the same draw each time
    assert set(c.source for c in half["train"]) < set(c.source for c in full["train"])
    for label in (0, 1):
        n_full = sum(c.label == label for c in full["train"])
        assert sum(c.label == label for c in half["train"]) == round(n_full / 2)


@pytest.fixture(scope="module")
def three_kinds(generated, tmp_path_factory):
    """Three roots: 'gan' (real + fake), 'edits' (real + fake) and 'gen', fake only (paired with gan's reals)."""
    import shutil

    parent = tmp_path_factory.mktemp("kinds")
    for name in ("gan", "edits"):
        shutil.copytree(generated, parent / name, ignore=shutil.ignore_patterns("corrupt.jpg"))
    shutil.copytree(generated / "fake", parent / "gen" / "fake", ignore=shutil.ignore_patterns("corrupt.jpg"))
    return [parent / "gan", parent / "edits", parent / "gen"]


def test_kind_head_learns_from_fakes_beside_a_held_out_root_and_ships(three_kinds, tmp_path):
    from training.kinds import FAKE_KINDS

    kinds = {"gan": "gan", "edits": "hand_edit", "gen": "diffusion"}
    cfg = config(tmp_path, size="face", model={"input_size": 64}, crop="native", epochs=2, kind_loss=1.0,
                 kinds=kinds, real_from={"gen": "gan"}, holdout="edits", balance_datasets=True, balance_power=0.5,
                 augment={**NO_LOSSY_AUG, "sbi": 0.5})
    crops, _, _ = prepare_crops(cfg, three_kinds)
    assert {c.dataset for c in crops["train"]} == {"gan", "gen"} == {c.dataset for c in crops["val"]}
    assert {c.dataset for c in crops["test"]} == {"gan", "gen", "edits"}  # the held-out root: test only
    gen_reals = sorted(str(c.source) for c in crops["test"] if c.dataset == "gen" and c.label == 0)
    assert gen_reals == sorted(str(c.source) for c in crops["test"] if c.dataset == "gan" and c.label == 0)

    trainer = Trainer(cfg, crops["train"], crops["val"], tmp_path / "run", seed=0)
    samples = [trainer.train_set[i] for i in range(len(trainer.train_set))]  # each draw augments anew: read once
    labels, targets = [y.item() for _, y, _ in samples], [t.item() for _, _, t in samples]
    # reals have no kind; self-blended reals are face swaps; a root's own fakes are its kind
    assert {t for t, y in zip(targets, labels) if y == 0} == {-1}
    assert set(targets) - {-1} == {FAKE_KINDS.index(k) for k in ("gan", "diffusion", "face_swap")}

    meta = train(cfg, three_kinds, tmp_path / "run", output=tmp_path / "w.safetensors", command="pytest")
    assert meta["kinds"] == list(FAKE_KINDS)
    assert set(meta["metrics"]["test"]["per_dataset_auc"]) == {"gan", "gen", "edits"}
    assert meta["data"]["real_from"] == {"gen": "gan"}
    evaluate_main(["--cross", f"no_edits={tmp_path / 'w.safetensors'}", "--data", *map(str, three_kinds), "--out",
                   str(tmp_path / "loko"), "--cache-dir", cfg.cache_dir, "--threads", "1", "--bootstrap", "20"])
    matrix = json.loads((tmp_path / "loko" / "cross_kind.json").read_text())
    assert matrix["leave_one_kind_out"] == {"held_out": {"no_edits": "edits"}, "mean_roc_auc": matrix["no_edits"]["edits"]["roc_auc"]}
    assert matrix["no_edits"]["edits"]["roc_auc"] == pytest.approx(meta["metrics"]["test"]["per_dataset_auc"]["edits"])
    assert "**" in (tmp_path / "loko" / "cross_kind.md").read_text()

    model, _ = load_weights(tmp_path / "w.safetensors")
    fresh = Trainer(cfg, crops["train"], crops["val"], tmp_path / "fresh", seed=0).model
    assert not torch.equal(model.kind_classifier.weight, fresh.kind_classifier.weight)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits, kind_logits = model.eval().forward_with_kinds(x)
        assert kind_logits.shape == (3, len(FAKE_KINDS))
        assert torch.equal(logits, model(x))  # the binary answer is the model's own

    # the evaluation counts how the head names each root's test fakes: every fake once, under its root's kind
    from training.evaluate import kind_guesses, score_roots

    scored = score_roots(model, meta, list(three_kinds), "test", cfg.cache_dir, 1, 8, torch.device("cpu"))
    guesses = kind_guesses(model, meta, scored, 8, torch.device("cpu"))
    assert set(guesses) == {"gan", "edits", "gen"}
    for root, row in guesses.items():
        assert row["kind"] == kinds[root]
        assert row["fakes"] == int(scored[root].y.sum()) == sum(row["guesses"].values())
        assert list(row["guesses"]) == list(FAKE_KINDS)


def test_balance_power_sets_each_roots_share_of_the_draws(generated, tmp_path):
    from pathlib import Path

    from training.data import CachedCrop

    items = [CachedCrop(Path("x.png"), i % 2, Path(f"{i}.png"), True, "small" if i < 10 else "large") for i in range(100)]
    for power, share in [(0.0, 0.5), (0.5, 10**0.5 / (10**0.5 + 90**0.5)), (1.0, 0.1)]:
        cfg = config(tmp_path, balance_datasets=True, balance_power=power)
        trainer = Trainer(cfg, items, [], tmp_path / f"p{power}", seed=0)
        drawn = [i for epoch in range(1, 41) for i in trainer.loader(trainer.train_set, True, epoch).sampler]
        observed = sum(items[i].dataset == "small" for i in drawn) / len(drawn)
        assert observed == pytest.approx(share, abs=0.03), power


def test_any_config_field_can_be_set_from_the_command_line():
    from training.config import with_settings

    cfg = with_settings(TrainConfig(augment={"flip": 0.5}), ["kind_loss=0.3", "augment.sbi=0.2", "model.neck_multiplier=4",
                                                            "real_from={diffusion: faces}"])
    assert (cfg.kind_loss, cfg.augment, cfg.model, cfg.real_from) == (0.3, {"flip": 0.5, "sbi": 0.2}, {"neck_multiplier": 4},
                                                                      {"diffusion": "faces"})
    with pytest.raises(ValueError, match="unknown config key 'kind_los'"):
        with_settings(cfg, ["kind_los=1"])


def test_learning_rate_schedule_holds_frozen_groups_warms_up_and_ends_at_the_floor():
    from training.optim import warmup_cosine

    factor = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.02)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warm-up to the full rate
    assert factor(10) == pytest.approx(1.0) and factor(99) == pytest.approx(0.02, abs=1e-3)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 99))  # then only down
    frozen = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.02, start_step=30)
    assert [frozen(s) for s in (0, 29)] == [0.0, 0.0]  # a frozen backbone's groups do not move
    assert frozen(30) == pytest.approx(0.1) and frozen(39) == pytest.approx(1.0)
    assert frozen(99) == pytest.approx(0.02, abs=1e-3)  # and still end at the floor on the last step
