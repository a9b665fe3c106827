"""The source adversary: a head that guesses a real photo's data root, behind a gradient reversal."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from runtime.model import build_model
from training.adversary import NO_SOURCE, SourceHead, WithSourceHead, ramp, source_loss
from training.sampling import prepare_crops
from training.train import Trainer, train
from tests.test_training import NO_LOSSY_AUG, config, generated  # noqa: F401  (the fixture)

FACE = dict(size="face", model={"input_size": 64}, crop="native", kind_loss=1.0, real_from={"gen": "gan"},
            kinds={"gan": "gan", "edits": "hand_edit", "gen": "diffusion"}, augment={**NO_LOSSY_AUG, "sbi": 0.3})


@pytest.fixture(scope="module")
def two_sources(generated, tmp_path_factory):  # noqa: F811
    """Two roots with reals and fakes, and 'gen', fake only, paired with gan's reals."""
    parent = tmp_path_factory.mktemp("sources")
    for name in ("gan", "edits"):
        shutil.copytree(generated, parent / name, ignore=shutil.ignore_patterns("corrupt.jpg"))
    shutil.copytree(generated / "fake", parent / "gen" / "fake", ignore=shutil.ignore_patterns("corrupt.jpg"))
    return [parent / "gan", parent / "edits", parent / "gen"]


def test_the_features_get_the_source_heads_gradient_reversed_and_scaled():
    torch.manual_seed(0)
    model = build_model("face", input_size=64, kind_classes=4).train()
    head = SourceHead(2 * model.forward_features(torch.zeros(2, 3, 64, 64)).shape[1], sources=3)
    images, sources = torch.rand(4, 3, 64, 64), torch.tensor([0, 2, NO_SOURCE, 1])

    def gradients(strength: float | None):
        model.zero_grad(), head.zero_grad()
        torch.manual_seed(1)  # the same dropout mask both times
        if strength is None:  # no reversal: the head and the features descend the same loss
            pooled = model.forward_head(model.forward_features(images), pre_logits=True)
            source_loss(head(pooled), sources).backward()
        else:
            both = WithSourceHead(model, head)
            both.strength = strength
            logits, kinds, source_logits = both(images)
            assert logits.shape == (4,) and kinds.shape == (4, 4) and source_logits.shape == (4, 3)
            source_loss(source_logits, sources).backward()
        return ({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                {k: p.grad.clone() for k, p in head.named_parameters()})

    plain_model, plain_head = gradients(None)
    reversed_model, reversed_head = gradients(0.5)
    assert plain_model and set(plain_model) == set(reversed_model)
    for name, grad in plain_model.items():  # the features are pushed away from telling the roots apart
        assert torch.allclose(reversed_model[name], -0.5 * grad, atol=1e-6), name
    for name, grad in plain_head.items():  # while the head itself still learns to tell them
        assert torch.allclose(reversed_head[name], grad, atol=1e-6), name


def test_fakes_carry_no_source_and_a_batch_of_fakes_costs_nothing():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = source_loss(logits, torch.full((3,), NO_SOURCE))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 2))


def test_the_reversal_ramps_from_nothing_to_full_strength():
    values = [ramp(p / 10) for p in range(11)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0, abs=1e-4)
    assert all(a < b for a, b in zip(values, values[1:]))
    assert ramp(-1) == 0.0 and ramp(2) == values[-1]


def test_source_adversary_trains_beside_the_kind_head_resumes_exactly_and_is_not_shipped(two_sources, tmp_path):
    cfg = config(tmp_path, epochs=2, source_adversary=1.0, **FACE)
    crops, _, _ = prepare_crops(cfg, two_sources)
    trainer = Trainer(cfg, crops["train"], crops["val"], tmp_path / "straight", seed=0)
    # gen's reals are gan's photos: one source, not a third the head could never tell apart
    assert trainer.sources == ["edits", "gan"]
    assert any(item.dataset == "gen" and item.label == 0 for item in trainer.train_set.items)
    samples = [trainer.train_set[i] for i in range(len(trainer.train_set))]
    # the source target: the root of a photo that is still real, none for any fake (self-made ones too)
    for item, (_, label, _, source) in zip(trainer.train_set.items, samples):
        origin = {"gen": "gan"}.get(item.dataset, item.dataset)
        expected = trainer.sources.index(origin) if label.item() == 0 else NO_SOURCE
        assert source.item() == expected
    assert any(s[1].item() == 1 and trainer.train_set.items[i].label == 0 for i, s in enumerate(samples))  # SBI fakes

    start = {k: v.clone() for k, v in trainer.source_head.state_dict().items()}
    trainer.fit()
    assert not torch.equal(trainer.source_head.state_dict()["net.0.weight"], start["net.0.weight"])
    log = (tmp_path / "straight" / "log.csv").read_text().splitlines()
    accuracy = [float(row.split(",")[-1]) for row in log[1:]]
    assert log[0].endswith("train_source_accuracy") and all(0.0 <= a <= 1.0 for a in accuracy)

    interrupted = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    interrupted.fit(stop_after=1)
    resumed = Trainer(cfg, crops["train"], crops["val"], tmp_path / "resumed", seed=0)
    resumed.fit(resume=True)
    for key, value in trainer.source_head.state_dict().items():
        assert torch.equal(value, resumed.source_head.state_dict()[key])
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    plain = Trainer(config(tmp_path, epochs=1, **FACE), crops["train"], crops["val"], tmp_path / "plain", seed=0)
    assert set(a) == set(plain.model.state_dict())  # the shipped weights: the model's alone


def test_a_run_with_the_adversary_finishes_with_its_metadata(two_sources, tmp_path):
    cfg = config(tmp_path, epochs=1, source_adversary=0.5, **FACE)
    meta = train(cfg, two_sources, tmp_path / "run", output=tmp_path / "w.safetensors", command="pytest")
    assert meta["training"]["source_adversary"] == 0.5
    assert np.isfinite(meta["metrics"]["test"]["roc_auc"])
