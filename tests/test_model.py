"""The model's contract: shapes, sizes, the in-model FFT, and the weights round trip."""

import pytest
import torch

from training.model import SIZES, FrequencyFeatures, build_model, count_parameters
from training.weights_io import load_weights, save_weights

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
        features = model.features(x)
        logits = model(x)
        assert torch.allclose(model.head(features), logits)
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

    log_mag = torch.log(reference + layer.eps)
    mean = log_mag.mean(dim=(1, 2), keepdim=True)
    std = log_mag.std(dim=(1, 2), keepdim=True)
    expected = ((log_mag - mean) / (std + 1e-6)).unsqueeze(1)
    torch.testing.assert_close(layer(rgb), expected, rtol=1e-4, atol=1e-4)


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
