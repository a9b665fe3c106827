"""The model's contract: shapes, sizes, the in-model FFT, and the weights round trip."""

import pytest
import torch

from runtime.blocks import FrequencyFeatures
from runtime.model import build_model, count_parameters
from runtime.xception_hybrid import SIZES
from runtime.weights import load_weights, save_weights

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "size, input_size, low, high",
    [("small", 192, 2.0e6, 4.0e6), ("base", 224, 13.0e6, 17.0e6)],
)
def test_shapes_and_parameter_counts(size, input_size, low, high):
    torch.manual_seed(0)
    model = build_model(size).eval()
    assert model.config.input_size == input_size
    assert low <= count_parameters(model) <= high
    x = torch.rand(2, 3, input_size, input_size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        assert torch.allclose(model.forward_head(features), logits)
    assert logits.shape == (2,)
    assert features.shape[:2] == (2, SIZES[size].exit_channels[1])
    assert torch.isfinite(logits).all()


def test_small_is_the_documented_size():
    assert round(count_parameters(build_model("small")) / 1e6, 1) == 2.8
    assert round(count_parameters(build_model("base")) / 1e6, 1) == 14.8


@pytest.mark.parametrize("size", [32, 33])
def test_frequency_channel_matches_torch_fft(size):
    torch.manual_seed(1)
    rgb = torch.rand(3, 3, size, size, dtype=torch.float64)
    # float64 input; the bases are stored in float32, which bounds the agreement near 1e-6
    layer = FrequencyFeatures(size).double()
    gray = rgb.mean(dim=1)
    reference = torch.fft.fftshift(torch.fft.fft2(gray, norm="ortho"), dim=(-2, -1)).abs()
    torch.testing.assert_close(layer.magnitude(rgb), reference, rtol=1e-5, atol=2e-6)

    # the standardised log-magnitude: per image mean 0 and (sample) standard deviation 1, and the same
    # order as the FFT's magnitudes (log and standardising are increasing)
    out = layer(rgb)
    assert out.shape == (3, 1, size, size)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-4)
    for image in range(3):
        order = reference[image].flatten().argsort()
        assert (out[image, 0].flatten()[order].diff() >= -1e-9).all()


def test_frequency_channel_of_a_flat_image_by_hand():
    """A flat grey image: all its energy at DC (the centre after fftshift, row and column S // 2),
    every other magnitude 0. Of n = S * S values one is high and n - 1 are equal, so standardised
    (sample std) the centre is (n - 1) / sqrt(n) and the rest -1 / sqrt(n), whatever the grey level:
    for S = 32, 1023 / 32 = 31.96875 and -1 / 32 = -0.03125."""
    layer = FrequencyFeatures(32).double()
    for grey in (0.25, 0.8):
        out = layer(torch.full((1, 3, 32, 32), grey, dtype=torch.float64))[0, 0]
        # |DC| with the orthonormal scale: sum of the pixels / S = grey * S
        assert float(layer.magnitude(torch.full((1, 3, 32, 32), grey, dtype=torch.float64))[0, 16, 16]) == pytest.approx(grey * 32, rel=1e-6)
        assert float(out[16, 16]) == pytest.approx(31.96875, rel=1e-5)  # the 1e-6 beside the std: 3e-6
        rest = torch.cat([out.flatten()[: 16 * 32 + 16], out.flatten()[16 * 32 + 17 :]])
        torch.testing.assert_close(rest, torch.full_like(rest, -0.03125), rtol=0, atol=1e-6)


def test_frequency_channel_float32_is_close_to_fft():
    torch.manual_seed(2)
    rgb = torch.rand(2, 3, 192, 192)
    reference = torch.fft.fftshift(torch.fft.fft2(rgb.mean(dim=1).double(), norm="ortho"), dim=(-2, -1)).abs()
    torch.testing.assert_close(FrequencyFeatures(192).magnitude(rgb).double(), reference, rtol=1e-3, atol=2e-4)


def test_weights_round_trip(tmp_path):
    torch.manual_seed(3)
    model = build_model("small", input_size=64, middle_blocks=1).eval()
    path = save_weights(model, tmp_path / "w.safetensors", {"threshold": 0.42, "metrics": {"test": {"roc_auc": 0.9}}})
    loaded, meta = load_weights(path)
    assert meta["threshold"] == 0.42
    assert meta["labels"] == {"0": "real", "1": "fake"}
    assert meta["architecture"]["input_size"] == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------- the face-pretrained family


def test_face_family_contract():
    torch.manual_seed(4)
    model = build_model("face").eval()
    assert model.config.family == "face_hybrid" and model.config.input_size == 192
    assert count_parameters(model) < 1e6  # default weights far under the 20 MB cap
    x = torch.rand(3, 3, 192, 192)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        torch.testing.assert_close(model.forward_head(features), logits)
    assert logits.shape == (3,) and features.shape[2:] == (6, 6)
    # a constant image makes many channels constant: the pooled std must still back-propagate
    model.train()
    model(torch.full((2, 3, 192, 192), 0.5)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_face_family_round_trip_keeps_family(tmp_path):
    torch.manual_seed(5)
    model = build_model("face", input_size=64).eval()
    loaded, meta = load_weights(save_weights(model, tmp_path / "f.safetensors"))
    assert type(loaded) is type(model) and meta["architecture"]["family"] == "face_hybrid"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_pretrained_backbone_reproduces_retinaface_graph():
    """The copied backbone gives RetinaFace's own stage outputs, computed by onnxruntime on its graph."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from retinaface.weights import WEIGHTS

    from runtime.face_hybrid import RetinaFaceBackbone, load_pretrained_backbone

    graph = onnx.load_from_string(WEIGHTS)
    stage_outputs = [f"/fx/stage{i}/stage{i}.{j}/stage{i}.{j}.1/stage{i}.{j}.1.2/LeakyRelu_output_0"
                     for i, j in ((1, 5), (2, 5), (3, 1))]
    for name in stage_outputs:
        graph.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-127, 150, (2, 3, 96, 96)).astype(np.float32)
    expected = session.run(stage_outputs, {"input": x})

    backbone = load_pretrained_backbone(RetinaFaceBackbone()).eval()
    with torch.no_grad():
        f8 = backbone.stage1(torch.from_numpy(x) / 255.0)  # it takes RetinaFace's input / 255
        f16 = backbone.stage2(f8)
        f32 = backbone.stage3(f16)
    for reference, ours in zip(expected, (f8, f16, f32)):
        np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)

    # the model's own input convention (what the linear probe reads): the same RetinaFace input as
    # RGB in [0, 1], i.e. the BGR means added back, scaled and flipped to RGB
    from runtime.face_hybrid import BGR_MEAN

    model = build_model("face", input_size=96).eval()
    load_pretrained_backbone(model.backbone)
    rgb = ((torch.from_numpy(x) + torch.tensor(BGR_MEAN).view(1, 3, 1, 1)) / 255.0).flip(1)
    with torch.no_grad():
        for reference, ours in zip(expected, model.backbone_features(rgb)):
            np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-3, atol=1e-3)


def test_block_spectrum_is_the_dct_of_each_tile():
    import numpy as np
    from scipy.fft import dctn

    from runtime.blocks import BlockSpectrum

    torch.manual_seed(6)
    rgb = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    spectrum = BlockSpectrum(8).double()(rgb)
    assert spectrum.shape == (2, 64, 4, 4)
    gray = rgb.mean(dim=1).numpy()
    for n, row, col in [(0, 0, 0), (1, 1, 2), (0, 3, 1)]:
        tile = gray[n, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8]
        expected = np.log(1e-3 + np.abs(dctn(tile, norm="ortho"))).reshape(-1)  # row-major (u, v)
        np.testing.assert_allclose(spectrum[n, :, row, col].numpy(), expected, rtol=0, atol=1e-5)
