"""One verdict from a clip's per-frame scores: the rule serving (``handler/video.py``) and the clip
evaluation (``training/clips.py``) share.

It follows the practice of the DFDC winners (docs: "Video input"): the mean P(fake) over the frames
with a face, unless the clip is confidently fake, i.e. at least CONFIDENT_SHARE of those frames
(and at least CONFIDENT_MIN_FRAMES of them) have P(fake) above STRONG_FAKE, in which case the mean
of those strongly fake frames. A manipulation that shows in part of a clip is then not averaged
away by the frames where it does not show.
"""

from __future__ import annotations

from statistics import fmean

STRONG_FAKE = 0.8
CONFIDENT_SHARE = 0.4
CONFIDENT_MIN_FRAMES = 3
# P(fake) at or above which an answer is "fake" until calibration stores another in the weights' metadata
DEFAULT_THRESHOLD = 0.5


BANDS = ("likely_real", "uncertain", "likely_fake")
NO_FACE = "no_face"  # the band (and label) of an answer in which no face was found: no verdict on a face


def band(probability: float, cutoffs: dict | None, face_found: bool = True) -> str:
    """Which verdicts a reviewer should check first: ``likely_real`` below the weights'
    ``likely_real_below``, ``likely_fake`` from ``likely_fake_from`` (both set on validation for a
    precision, ``training.metrics.band_cutoffs``), ``uncertain`` between them or when the weights
    carry no cut-offs, and ``no_face`` when no face was found."""
    if not face_found:
        return NO_FACE
    if not cutoffs:
        return "uncertain"
    if probability >= cutoffs["likely_fake_from"]:
        return "likely_fake"
    if probability < cutoffs["likely_real_below"]:
        return "likely_real"
    return "uncertain"


def aggregate(probabilities: list[float], has_face: list[bool]) -> tuple[float, str, int]:
    """(P(fake) of the clip, the rule that decided it, how many frames were strongly fake), over the
    frames with a face, or over every frame when none has one."""
    scored = [p for p, face in zip(probabilities, has_face) if face] or list(probabilities)
    strong = [p for p in scored if p > STRONG_FAKE]
    if len(strong) >= max(CONFIDENT_MIN_FRAMES, CONFIDENT_SHARE * len(scored)):
        return fmean(strong), "confident_fake", len(strong)
    return fmean(scored), "mean", len(strong)
