"""Parity of every exported artifact with the eager model.

On a fixed set of face crops (the shipped ``examples/`` images through the serving preprocessing, or
deterministic generated images when there are none), each artifact runs at batch 1 (image by image)
and at the largest batch (the set repeated to fill it). Against the eager FP32 model on CPU at the
same batch size it must meet:

- max |Δ fake_probability| <= 1e-4 (FP32) or 1e-2 (FP16), and the same for every kind-of-fake
  probability where the model has a kind head;
- identical real/fake decisions at the weights' stored threshold, for every image whose eager
  probability is farther than that tolerance from the threshold. Images inside the band are listed as
  borderline: a difference the tolerance allows may legitimately flip them.

Writes ``parity.json`` and ``parity.md``; ``python -m export.parity`` re-checks an export folder and
exits non-zero on a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.artifacts import Artifact, read_manifest
from runtime.backends import load_backend
from runtime.decoding import decode_image
from runtime.photo import IMAGE_SUFFIXES
from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch
from runtime.verdict import DEFAULT_THRESHOLD
from runtime.weights import load_metadata

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
DEFAULT_EXAMPLES = Path("examples")
DEFAULT_IMAGE_COUNT = 8


# ---------------------------------------------------------------- inputs


def example_crops(examples_dir: Path, settings, count: int) -> torch.Tensor | None:
    """Face crops of the first ``count`` images under ``examples_dir`` (sorted paths, subfolders
    included), or None when it has none."""
    files = sorted(p for p in Path(examples_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    files = files[:count]
    if not files:
        return None
    images = [decode_image(p.read_bytes()) for p in files]
    prepared = FacePreprocessor.from_settings(settings, threads=1).prepare_many(images)
    return to_tensor_batch([p.crops[0] for p in prepared])


def generated_images(input_size: int, count: int, seed: int = 0) -> torch.Tensor:
    """Deterministic smooth colour fields with rising noise levels: varied, reproducible inputs."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=generator)
    smooth = F.interpolate(coarse, size=(input_size, input_size), mode="bicubic", align_corners=False)
    noise = torch.rand(count, 3, input_size, input_size, generator=generator) - 0.5
    levels = torch.linspace(0.0, 0.5, count).view(count, 1, 1, 1)
    return (smooth + levels * noise).clamp(0.0, 1.0)


def parity_images(settings, examples_dir: Path = DEFAULT_EXAMPLES, count: int = DEFAULT_IMAGE_COUNT) -> tuple[torch.Tensor, str]:
    """(images (K, 3, S, S) in [0, 1], a description of where they came from); ``settings`` is the
    weights' :class:`runtime.preprocessing.PreprocessSettings`, so the crops are the served ones."""
    crops = example_crops(examples_dir, settings, count) if Path(examples_dir).is_dir() else None
    if crops is not None:
        return crops, f"{len(crops)} face crops of {examples_dir}/"
    return generated_images(settings.input_size, count), f"{count} generated images (no images in {examples_dir}/)"


# ---------------------------------------------------------------- runners


def load_runner(artifact: Artifact, export_dir: Path, device: str = "cpu", threads: int = 0):
    """Serving's own loader for one artifact (``runtime.backends.load_backend``, as the handler calls
    it), so parity checks what is served: (N, 3, S, S) float32 -> (N,) float32 CPU logits."""
    return load_backend(
        artifact.backend,
        Path(export_dir) / artifact.file,
        torch.device(device),
        artifact.precision,
        threads=threads,
        min_batch=artifact.min_batch,
        max_batch=artifact.max_batch,
    )


def reference_runner(weights: Path):
    """The reference: the eager FP32 model on the CPU, loaded as the eager archive serves it."""
    return load_backend("eager", Path(weights), torch.device("cpu"), "fp32")


# ---------------------------------------------------------------- comparison


@dataclass
class BatchResult:
    batch: int
    max_abs_diff: float
    decisions_match: bool
    mismatched: list[int]  # image indices (within the batch) whose decision differs
    borderline: list[int]  # within the tolerance of the threshold: not decision-checked
    kind_max_abs_diff: float | None = None  # of the kind-of-fake probabilities, where there is a kind head

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff, self.kind_max_abs_diff or 0.0)


@dataclass
class ParityResult:
    key: str
    backend: str
    precision: str
    file: str
    tolerance: float
    passed: bool = False
    batches: list[BatchResult] = field(default_factory=list)
    error: str | None = None


def batches_of(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Batch 1: each image alone. Larger: the image set repeated to fill one batch."""
    if batch == 1:
        return [img.unsqueeze(0) for img in images]
    return [images[torch.arange(batch) % len(images)]]


def probabilities(runner, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(P(fake) (N,), kind probabilities (N, K) or None) over ``images`` in batches of ``batch``."""
    outputs = [runner.outputs(x) for x in batches_of(images, batch)]
    p = torch.cat([torch.sigmoid(logits.double()) for logits, _ in outputs])
    kinds = [k for _, k in outputs if k is not None]
    return p, (torch.cat([torch.softmax(k.double(), dim=1) for k in kinds]) if kinds else None)


class Reference:
    """The eager model's probabilities per batch size, computed once and shared by all artifacts."""

    def __init__(self, runner, images: torch.Tensor):
        self.runner, self.images, self._cache = runner, images, {}

    def probabilities(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if batch not in self._cache:
            self._cache[batch] = probabilities(self.runner, self.images, batch)
        return self._cache[batch]


def compare(got: tuple, want: tuple, batch: int, threshold: float, tolerance: float) -> BatchResult:
    """``got`` and ``want``: (P(fake), kind probabilities or None) of the artifact and the reference."""
    (got_p, got_kinds), (want_p, want_kinds) = got, want
    decided = (want_p - threshold).abs() > tolerance
    mismatch = ((got_p >= threshold) != (want_p >= threshold)) & decided
    if (got_kinds is None) != (want_kinds is None):
        raise ValueError("the artifact and the eager model disagree on whether there is a kind head")
    return BatchResult(
        batch=batch,
        max_abs_diff=float((got_p - want_p).abs().max()),
        decisions_match=not bool(mismatch.any()),
        mismatched=mismatch.nonzero().flatten().tolist(),
        borderline=(~decided).nonzero().flatten().tolist(),
        kind_max_abs_diff=None if want_kinds is None else float((got_kinds - want_kinds).abs().max()),
    )


def check_artifact(
    artifact: Artifact,
    export_dir: Path,
    reference: Reference,
    threshold: float,
    device: str = "cpu",
    threads: int = 0,
) -> ParityResult:
    tolerance = TOLERANCE[artifact.precision]
    result = ParityResult(artifact.key, artifact.backend, artifact.precision, artifact.file, tolerance)
    try:
        runner = load_runner(artifact, export_dir, device, threads)
        for batch in sorted({artifact.min_batch, artifact.max_batch}):
            got = probabilities(runner, reference.images, batch)
            result.batches.append(compare(got, reference.probabilities(batch), batch, threshold, tolerance))
    except Exception as exc:  # a broken artifact is a parity failure to report, not a crash
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.passed = all(b.worst <= tolerance and b.decisions_match for b in result.batches)
    return result


# ---------------------------------------------------------------- reports


def write_reports(
    out_dir: Path, results: list[ParityResult], info: dict, artifacts: list[Artifact] = ()
) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    payload = {**info, "passed": all(r.passed for r in results), "results": [asdict(r) for r in results]}
    json_path = out_dir / "parity.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path = out_dir / "parity.md"
    md_path.write_text(markdown_table(results, info) + exports_table(artifacts))
    return json_path, md_path


def exports_table(artifacts: list[Artifact]) -> str:
    if not artifacts:
        return ""
    lines = ["", "## Exports", "", "| artifact | file | built on | batch range | export time | size |", "|---|---|---|---|---:|---:|"]
    for a in artifacts:
        lines.append(
            f"| {a.key} | `{a.file}` | {a.device} | {a.min_batch}–{a.max_batch} | {a.export_seconds:.1f} s"
            f" | {a.size_bytes / 1e6:.1f} MB |"
        )
    return "\n".join(lines) + "\n"


def markdown_table(results: list[ParityResult], info: dict) -> str:
    lines = [
        "# Export parity against the eager model",
        "",
        f"Weights: `{info.get('weights')}` · images: {info.get('images')} · threshold {info.get('threshold')}"
        f" · device `{info.get('device')}`",
        "",
        "| artifact | file | batch | max abs diff P(fake) | max abs diff P(kind) | tolerance | decisions | result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.key} | `{r.file}` | – | – | – | {r.tolerance:g} | – | **FAIL**: {r.error} |")
            continue
        for b in r.batches:
            decisions = "identical" if b.decisions_match else f"differ at {b.mismatched}"
            if b.borderline:
                decisions += f" ({len(b.borderline)} borderline)"
            ok = b.worst <= r.tolerance and b.decisions_match
            kinds = "–" if b.kind_max_abs_diff is None else f"{b.kind_max_abs_diff:.2e}"
            lines.append(
                f"| {r.key} | `{r.file}` | {b.batch} | {b.max_abs_diff:.2e} | {kinds} | {r.tolerance:g} | {decisions} |"
                f" {'pass' if ok else '**FAIL**'} |"
            )
    lines += ["", f"Overall: {'PASS' if all(r.passed for r in results) else 'FAIL'}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- entry points


def run_parity(
    export_dir: Path,
    artifacts: list[Artifact],
    weights: Path,
    device: str = "cpu",
    examples_dir: Path = DEFAULT_EXAMPLES,
    count: int = DEFAULT_IMAGE_COUNT,
    threads: int = 0,
    log=print,
) -> list[ParityResult]:
    """Check every artifact and write the reports; the eager FP32 model on CPU is the reference."""
    meta = load_metadata(weights)
    threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
    images, source = parity_images(PreprocessSettings.from_metadata(meta), examples_dir, count)
    log(f"[parity] {source}, threshold {threshold:g}")
    reference = Reference(reference_runner(weights), images)
    results = []
    for artifact in artifacts:
        result = check_artifact(artifact, export_dir, reference, threshold, device, threads)
        worst = max((b.worst for b in result.batches), default=float("nan"))
        status = "pass" if result.passed else f"FAIL{': ' + result.error if result.error else ''}"
        log(f"[parity] {artifact.key:<16} max |Δp| {worst:.2e} (≤ {result.tolerance:g}) {status}")
        results.append(result)
    info = {"weights": str(weights), "images": source, "threshold": threshold, "device": device}
    json_path, md_path = write_reports(export_dir, results, info, artifacts)
    log(f"[parity] report: {md_path} and {json_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-check the parity of an export folder's artifacts.")
    parser.add_argument("--export-dir", type=Path, default=Path("build/export"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=Path, default=DEFAULT_EXAMPLES)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGE_COUNT, help="how many fixed images")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: library default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info, artifacts = read_manifest(args.export_dir)
    results = run_parity(
        args.export_dir, artifacts, Path(info["weights"]), args.device, args.examples, args.images, args.threads
    )
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
