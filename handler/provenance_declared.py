"""What a file declares about its origin, in one word (:data:`DECLARED`), from explicit
declarations only: C2PA digital source types and edit actions, XMP's ``DigitalSourceType``, image
generators' PNG text keys, a camera's EXIF or container make and model. It never changes the model's
label or P(fake); where the two disagree, the answer says so (:func:`beside_verdict`).
Ships inside the model archive.
"""

from __future__ import annotations

# The summary, strongest first: the strongest declaration found decides it.
DECLARED = ("ai_generated", "ai_edited", "edited", "camera", "none")
# IPTC digital source types (http://cv.iptc.org/newscodes/digitalsourcetype/<name>), as C2PA actions
# and XMP use them -> the summary. Types that say neither camera, human edit nor a trained model
# (algorithmicMedia, dataDrivenMedia, screenCapture, virtualRecording) are reported, not summarised.
SOURCE_TYPES = {
    "trainedAlgorithmicMedia": "ai_generated",
    "compositeWithTrainedAlgorithmicMedia": "ai_edited",
    "algorithmicallyEnhanced": "ai_edited",
    "compositeSynthetic": "ai_edited",
    "humanEdits": "edited",
    "minorHumanEdits": "edited",
    "composite": "edited",
    "compositeCapture": "edited",
    "digitalCreation": "edited",
    "digitalCapture": "camera",
    "computationalCapture": "camera",
    "negativeFilm": "camera",
    "positiveFilm": "camera",
    "print": "camera",
}
# C2PA actions that change what the picture shows (metadata, format and publishing actions do not)
EDIT_ACTIONS = frozenset({"c2pa.edited", "c2pa.color_adjustments", "c2pa.cropped", "c2pa.drawing", "c2pa.enhanced",
                          "c2pa.filtered", "c2pa.placed", "c2pa.redacted", "c2pa.removed", "c2pa.deleted"})  # fmt: skip
# PNG text keys that image generators write: AUTOMATIC1111/Forge/Fooocus (parameters), ComfyUI
# (prompt, workflow), InvokeAI (invokeai_metadata, sd-metadata)
GENERATOR_TEXT_KEYS = frozenset({"parameters", "prompt", "workflow", "invokeai_metadata", "sd-metadata"})


def source_type_name(value: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> the last part."""
    return value.rstrip("/").rsplit("/", 1)[-1]


def declarations(c2pa: dict, metadata: dict) -> list[dict]:
    """Every explicit declaration found, with what it declares (:data:`DECLARED`)."""
    found = []
    for action in c2pa.get("actions", []) if c2pa.get("present") else []:
        source = action.get("digital_source_type")
        if source in SOURCE_TYPES:  # with the manifest's validation: an invalid one still declared it
            found.append({"source": "c2pa", "key": f"{action['action']} digitalSourceType", "value": source,
                          "declares": SOURCE_TYPES[source], "validation": c2pa["validation"]})  # fmt: skip
        elif action.get("action") in EDIT_ACTIONS:
            found.append({"source": "c2pa", "key": "action", "value": action["action"], "declares": "edited",
                          "validation": c2pa["validation"]})  # fmt: skip
    source = source_type_name(metadata.get("xmp", {}).get("DigitalSourceType", ""))
    if source in SOURCE_TYPES:
        found.append({"source": "xmp", "key": "DigitalSourceType", "value": source, "declares": SOURCE_TYPES[source]})
    for key in sorted(GENERATOR_TEXT_KEYS & metadata.get("text", {}).keys()):
        found.append({"source": "png", "key": key, "declares": "ai_generated"})
    for key in ("Make", "Model"):
        if key in metadata.get("exif", {}):
            found.append({"source": "exif", "key": key, "value": metadata["exif"][key][:200], "declares": "camera"})
    for key, value in metadata.get("tags", {}).items():  # a video's container: a phone's make and model
        if key.lower().rsplit(".", 1)[-1] in ("make", "model", "manufacturer"):
            found.append({"source": "container", "key": key, "value": value[:200], "declares": "camera"})
    return found


def strongest(found: list[dict]) -> str:
    return min((d["declares"] for d in found), key=DECLARED.index, default="none")


# What a declaration leads one to expect of the pixels; "edited" and "none" expect nothing.
EXPECTED_LABEL = {"ai_generated": "fake", "ai_edited": "fake", "camera": "real"}
WORDS = {"ai_generated": "AI generation", "ai_edited": "AI editing", "camera": "a camera capture"}


def beside_verdict(provenance: dict, label: str, probability: float, threshold: float) -> dict:
    """The provenance with its agreement with the model's verdict: ``agrees_with_model`` (None when
    the declaration expects nothing of the pixels) and, on disagreement, a ``note`` saying so. The
    verdict itself is never changed."""
    declared = provenance.get("declared", "none")
    expected = EXPECTED_LABEL.get(declared) if label in EXPECTED_LABEL.values() else None  # no face: no verdict to agree with
    result = {"declared": declared, "agrees_with_model": None if expected is None else expected == label}
    if expected is not None and expected != label:
        result["note"] = (f"the file declares {WORDS[declared]}, the model calls it {label} (P(fake) {probability:.3f} "
                          f"against the threshold {threshold:.3f}); the declaration does not change the verdict")  # fmt: skip
    return {**result, **{k: v for k, v in provenance.items() if k != "declared"}}
