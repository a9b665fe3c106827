"""What an upload says about where it came from, reported beside the pixel verdict, never instead of it.

Read from the raw bytes of every image (and every video whose container carries metadata):

- **C2PA** (Content Credentials) through c2pa-python (the c2pa-rs library): whether a manifest is
  present, its claim generator, actions and digital source types, the signer as it names itself,
  the validation state with its failure codes, and whether the signer is on a configured trust list.
- **Generator metadata** as found, with its keys: PNG text chunks (``parameters``, ``prompt``,
  ``workflow``, ...), EXIF ``Software``/``Make``/``Model`` (and ``ImageDescription``,
  ``UserComment``), XMP's IPTC ``DigitalSourceType`` and ``CreatorTool``; a video's container tags.
- **declared**: one word from explicit declarations only (:data:`DECLARED`). It never changes the
  model's label or P(fake); where the two disagree, the answer says so (:func:`beside_verdict`).

None of it is proof: metadata is stripped by most uploads and forged by anyone, and a C2PA signer
that is on no trust list is only a claim. Hostile metadata costs bounded work: every walk and value
is capped, the C2PA read runs on one helper thread under a time budget, and any failure becomes
``provenance.error`` while the verdict is still given. Nothing is fetched from the network (remote
manifests and OCSP are off). This module travels inside the model archive: no TorchServe import.

    python -m handler.provenance photo.heic clip.mov [--trust-anchors roots.pem]   # files on disk, as JSON
"""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from PIL import Image

from runtime.handler_settings import DEFAULT_PROVENANCE_BUDGET_S, HandlerSettings

logger = logging.getLogger(__name__)

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
EXIF_TAGS = {0x0131: "Software", 0x010F: "Make", 0x0110: "Model", 0x010E: "ImageDescription"}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"

# Caps: what one file may cost, whatever it holds
MAX_SEGMENTS = 4096  # chunks, segments or boxes walked
MAX_TEXT_ENTRIES = 32  # text chunks kept
MAX_VALUE_CHARS = 2048  # characters reported per value
MAX_INFLATE_BYTES = 1 << 20  # decompressed per compressed text chunk, and in all per file (x4)
MAX_EXIF_BYTES = 1 << 18
MAX_XMP_BYTES = 1 << 20
MAX_CHUNK_READ = MAX_XMP_BYTES + 1024  # bytes of one text chunk looked at (an XMP packet fits)
MAX_ACTIONS = 16
MAX_TAGS = 32  # video container tags
DEFAULT_BUDGET_S = DEFAULT_PROVENANCE_BUDGET_S


class OverBudget(Exception):
    """The file's metadata took longer than the time budget."""


@dataclass
class Found:
    """Metadata blocks found in one file (values already capped)."""

    text: dict[str, str] = field(default_factory=dict)  # PNG text chunks, JPEG/GIF comments
    exif: bytes | None = None
    xmp: bytes | None = None
    truncated: list[str] = field(default_factory=list)  # keys whose values were cut to the caps
    inflated: int = 0  # bytes decompressed so far

    def add_text(self, key: str, value: str) -> None:
        if key in self.text or len(self.text) >= MAX_TEXT_ENTRIES:
            self.truncated.append("text")
            return
        self.text[key] = capped(value, key, self.truncated)


def capped(value: str, key: str, truncated: list[str]) -> str:
    if len(value) > MAX_VALUE_CHARS:
        truncated.append(key)
        return value[:MAX_VALUE_CHARS]
    return value


# --- walking the containers -----------------------------------------------------------------------


def walk(data: bytes, deadline: float) -> Found:
    """The metadata blocks of an image, by its container: PNG chunks, JPEG segments and WebP chunks
    are walked here (text after the image data is found too); other formats (HEIF, AVIF, TIFF,
    GIF, BMP) through PIL's header parse, which reads no pixels."""
    found = Found()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _walk_png(data, found, deadline)
    elif data.startswith(b"\xff\xd8"):
        _walk_jpeg(data, found, deadline)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _walk_riff(data, found, deadline)
    else:
        _from_pil(data, found)
    return found


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise OverBudget("the file's metadata was not read within the time budget")


def _walk_png(data: bytes, found: Found, deadline: float) -> None:
    pos = 8
    for _ in range(MAX_SEGMENTS):
        if pos + 8 > len(data):
            return
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"eXIf" and found.exif is None:
            found.exif = data[pos + 8 : pos + 8 + min(length, MAX_EXIF_BYTES)]
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            _png_text(kind, data[pos + 8 : pos + 8 + min(length, MAX_CHUNK_READ)], found)
            if length > MAX_CHUNK_READ:
                found.truncated.append("text")
        elif kind == b"IEND":
            return
        pos += 12 + length
        _check(deadline)
    found.truncated.append("chunks")


def _png_text(kind: bytes, body: bytes, found: Found) -> None:
    """tEXt (Latin-1), zTXt (deflated Latin-1) and iTXt (UTF-8, maybe deflated; XMP lives here)."""
    keyword, _, rest = body.partition(b"\x00")
    key = keyword.decode("latin-1")[:80]
    if kind == b"tEXt":
        value = rest
    elif kind == b"zTXt":
        value = _inflate(rest[1:], found, key)
    else:
        compressed, rest = rest[:1] == b"\x01", rest[2:]
        _language, _, rest = rest.partition(b"\x00")
        _translated, _, value = rest.partition(b"\x00")
        value = _inflate(value, found, key) if compressed else value
    if key == "XML:com.adobe.xmp":
        found.xmp = found.xmp or value[:MAX_XMP_BYTES]
        return
    found.add_text(key, value.decode("latin-1" if kind != b"iTXt" else "utf-8", "replace"))


def _inflate(compressed: bytes, found: Found, key: str) -> bytes:
    """zlib with a ceiling on the output: a deflate bomb in a text chunk costs at most the cap."""
    room = min(MAX_INFLATE_BYTES, 4 * MAX_INFLATE_BYTES - found.inflated)
    if room <= 0:
        found.truncated.append(key)
        return b""
    inflater = zlib.decompressobj()
    try:
        value = inflater.decompress(compressed, room)
    except zlib.error:
        value = b""
    found.inflated += len(value)
    if inflater.unconsumed_tail:
        found.truncated.append(key)
    return value


def _walk_jpeg(data: bytes, found: Found, deadline: float) -> None:
    """Segments up to the start of scan: EXIF and XMP in APP1, comments in COM."""
    pos = 2
    for _ in range(MAX_SEGMENTS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill bytes, markers without a length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and found.exif is None:
            found.exif = body[:MAX_EXIF_BYTES]
        elif marker == 0xE1 and body.startswith(XMP_NAMESPACE) and found.xmp is None:
            found.xmp = body[len(XMP_NAMESPACE) :]
        elif marker == 0xFE:
            found.add_text("comment", body.decode("utf-8", "replace"))
        pos += 2 + length
        _check(deadline)
    found.truncated.append("segments")


def _walk_riff(data: bytes, found: Found, deadline: float) -> None:
    """WebP's RIFF chunks: EXIF and XMP."""
    pos = 12
    for _ in range(MAX_SEGMENTS):
        if pos + 8 > len(data):
            return
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        if kind == b"EXIF" and found.exif is None:
            found.exif = data[pos + 8 : pos + 8 + min(length, MAX_EXIF_BYTES)]
        elif kind == b"XMP " and found.xmp is None:
            found.xmp = data[pos + 8 : pos + 8 + min(length, MAX_XMP_BYTES)]
        pos += 8 + length + (length & 1)
        _check(deadline)
    found.truncated.append("chunks")


def _from_pil(data: bytes, found: Found) -> None:
    """HEIF and AVIF keep EXIF and XMP as items in their boxes, TIFF its tags in IFD0: PIL's header
    parse (the one decode_image already did) reads them without decoding pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            info = image.info
            exif = info.get("exif")
            if exif is None and image.format == "TIFF":
                exif = image.getexif().tobytes()
            found.exif = exif[:MAX_EXIF_BYTES] if isinstance(exif, bytes) else None
            xmp = info.get("xmp")
            found.xmp = xmp[:MAX_XMP_BYTES] if isinstance(xmp, bytes) else None
            if isinstance(info.get("comment"), bytes):
                found.add_text("comment", info["comment"].decode("utf-8", "replace"))


# --- reading the blocks ---------------------------------------------------------------------------


def exif_fields(exif: bytes, truncated: list[str]) -> dict[str, str]:
    """Software, Make, Model, ImageDescription and UserComment, as written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt EXIF makes PIL warn; a field it cannot read is left out
        tags = Image.Exif()
        tags.load(exif)
        fields = {}
        for tag, name in EXIF_TAGS.items():
            value = tags.get(tag)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str) and value.strip("\x00 "):
                fields[name] = capped(value.strip("\x00 "), f"exif.{name}", truncated)
        try:
            comment = tags.get_ifd(EXIF_IFD).get(USER_COMMENT)
        except Exception:
            comment = None
        if isinstance(comment, bytes) and (text := user_comment(comment)):
            fields["UserComment"] = capped(text, "exif.UserComment", truncated)
    return fields


def user_comment(value: bytes) -> str:
    """EXIF UserComment: an 8-byte character code, then the text (generators write their settings here)."""
    code, text = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        encoding = "utf-16-le" if text[:2] == b"\xff\xfe" or (len(text) > 1 and text[1] == 0 and text[0]) else "utf-16-be"
        return text.decode(encoding, "replace").lstrip("\ufeff").strip("\x00 ")
    return text.decode("utf-8" if code.startswith(b"ASCII") else "latin-1", "replace").strip("\x00 ")


# XMP is XML; three fields are read with patterns instead of an XML parser, so a hostile packet has
# no entity expansion or nesting to exploit (every pattern is linear in the packet's length).
XMP_FIELDS = {
    "DigitalSourceType": re.compile(
        r'DigitalSourceType\s*=\s*"([^"]*)"|DigitalSourceType[^>]*?rdf:resource\s*=\s*"([^"]*)"|DigitalSourceType>\s*([^<\s][^<]*)<'),
    "CreatorTool": re.compile(r'CreatorTool\s*=\s*"([^"]*)"|CreatorTool>\s*([^<]*)<'),
    "provenance": re.compile(r'dcterms:provenance\s*=\s*"([^"]*)"|dcterms:provenance>\s*([^<]*)<'),  # a remote C2PA manifest
}


def xmp_fields(xmp: bytes, truncated: list[str]) -> dict[str, str]:
    text = xmp[:MAX_XMP_BYTES].decode("utf-8", "replace")
    fields = {}
    for name, pattern in XMP_FIELDS.items():
        match = pattern.search(text)
        value = next((g for g in match.groups() if g), "") if match else ""
        if value.strip():
            fields[name] = capped(value.strip(), f"xmp.{name}", truncated)
    return fields


def source_type_name(value: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> the last part."""
    return value.rstrip("/").rsplit("/", 1)[-1]


# --- C2PA -----------------------------------------------------------------------------------------


def mime_of(data: bytes) -> str | None:
    """The media type c2pa-rs is told (it checks it against the bytes); None lets it detect."""
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:4] == b"GIF8":
        return "image/gif"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "image/heic"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    return None


class C2paReader:
    """c2pa-rs through c2pa-python, on one helper thread. A read that overruns its budget is left to
    finish in the background, and while it runs no other read starts: a hostile manifest can hold
    one thread at most, never the worker."""

    def __init__(self, trust_anchors: str | None = None, trust_list: str | None = None):
        import c2pa  # the native library loads here, once per worker

        settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}, "core": {"allowed_network_hosts": []}}
        if trust_anchors:
            settings["trust"] = {"trust_anchors": trust_anchors}
        self._c2pa = c2pa
        self.context = c2pa.Context(settings=c2pa.Settings.from_dict(settings))
        self.trust_list = trust_list if trust_anchors else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="c2pa-reader")
        self._idle = threading.Semaphore(1)

    def read(self, data: bytes, timeout: float) -> dict:
        """The manifest store summarised (``present`` False when there is none). Raises OverBudget,
        or the library's own error for a manifest it cannot parse."""
        if not self._idle.acquire(blocking=False):
            raise OverBudget("C2PA skipped: an earlier read is still running past its time budget")
        try:
            future = self._pool.submit(self._summary, data)
        except BaseException:
            self._idle.release()
            raise
        try:
            return future.result(timeout=max(0.0, timeout))
        except FutureTimeout:
            raise OverBudget("the C2PA manifest was not read within the time budget") from None

    def _summary(self, data: bytes) -> dict:
        try:
            reader = self._c2pa.Reader.try_create(mime_of(data), io.BytesIO(data), None, self.context)
            if reader is None:
                return {"present": False}
            with reader:
                return summarize_store(json.loads(reader.json()), self.trust_list)
        finally:
            self._idle.release()


def summarize_store(store: dict, trust_list: str | None) -> dict:
    """The active manifest of a C2PA manifest store as the answer reports it."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest")) or {}
    actions = []
    for assertion in active.get("assertions") or []:
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            actions += (assertion.get("data") or {}).get("actions") or []
    listed = [_action(action) for action in actions[:MAX_ACTIONS] if isinstance(action, dict)]
    results = (store.get("validation_results") or {}).get("activeManifest")
    problems = results.get("failure") if results else store.get("validation_status")
    failures = sorted({str(p.get("code")) for p in problems or [] if isinstance(p, dict)})
    state = str(store.get("validation_state") or ("Invalid" if failures else "Valid")).lower()
    signature = active.get("signature_info") or {}
    trusted = state == "trusted"
    return {
        "present": True,
        "claim_generator": _claim_generator(active),
        "title": _short(active.get("title")),
        "actions": listed,
        "digital_source_types": sorted({a["digital_source_type"] for a in listed if a.get("digital_source_type")}),
        "signer": {"name": _short(signature.get("common_name")), "issuer": _short(signature.get("issuer")),
                   "time": _short(signature.get("time"))},  # fmt: skip
        "validation": state,  # trusted | valid (intact, signer not trusted) | invalid
        "failures": failures[:32],
        "trusted": trusted,
        "trust_list": trust_list if trusted else None,
        "trust_note": _trust_note(trusted, trust_list),
        "manifests": len(manifests),
    }


def _trust_note(trusted: bool, trust_list: str | None) -> str:
    if trusted:
        return f"the signer's certificate chains to the trust list {trust_list}"
    if trust_list:
        return f"the signer is not on the trust list {trust_list}: its name is only a claim"
    return "no trust list is configured: the signer's name is only a claim"


def _action(action: dict) -> dict:
    agent = action.get("softwareAgent")
    agent = agent.get("name") if isinstance(agent, dict) else agent
    source = action.get("digitalSourceType")
    listed = {"action": _short(action.get("action"))}
    if source:
        listed["digital_source_type"] = source_type_name(str(source))
    if agent:
        listed["software_agent"] = _short(agent)
    return listed


def _claim_generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return _short(" ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k)))
    return _short(manifest.get("claim_generator"))


def _short(value) -> str | None:
    return None if value is None else str(value)[:200]


# --- what the file declares -----------------------------------------------------------------------


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


# --- the reader -----------------------------------------------------------------------------------


class ProvenanceReader:
    """Reads one upload's provenance under the caps and the time budget; ``read`` never raises."""

    def __init__(self, budget_s: float = DEFAULT_BUDGET_S, trust_anchors: Path | None = None, trust_list: str | None = None):
        self.budget_s = budget_s
        self.c2pa, self.c2pa_unavailable = None, None
        try:
            pem = trust_anchors.read_text() if trust_anchors else None
            self.c2pa = C2paReader(pem, trust_list or (trust_anchors.name if trust_anchors else None))
        except Exception as exc:  # a missing native library or an unreadable trust list: metadata still read
            self.c2pa_unavailable = f"C2PA reading is unavailable: {exc}"
            logger.exception("C2PA reading is off")

    @classmethod
    def from_settings(cls, settings: HandlerSettings, model_dir: Path) -> "ProvenanceReader | None":
        """From the archive's ``handler:`` settings: ``provenance`` (false: off), ``provenance_budget_ms``,
        ``c2pa_trust_anchors`` (a PEM file, relative to the model folder or absolute), ``c2pa_trust_list``."""
        if not settings.provenance:
            return None
        anchors = settings.c2pa_trust_anchors
        return cls(settings.provenance_budget_ms / 1000, model_dir / anchors if anchors else None, settings.c2pa_trust_list)

    @classmethod
    def from_config(cls, config: Mapping, model_dir: Path) -> "ProvenanceReader | None":
        """From a ``handler:`` section as a plain mapping, checked by the settings schema."""
        return cls.from_settings(HandlerSettings.from_mapping(config), model_dir)

    @property
    def trust_list(self) -> str | None:
        return self.c2pa.trust_list if self.c2pa else None

    def read(self, data: bytes, video_container: str | None = None) -> dict:
        """``declared``, ``declarations``, ``c2pa``, ``metadata`` (and ``truncated``, ``error``) of an
        image, or of a video in ``video_container`` (mp4, mov, mkv, webm)."""
        deadline = time.monotonic() + self.budget_s
        errors, truncated, metadata = [], [], {}
        try:
            metadata = video_tags(data, video_container, truncated) if video_container else image_metadata(data, deadline, truncated)
        except OverBudget as exc:
            errors.append(str(exc))
        except Exception as exc:  # whatever a hostile file provokes: said, never raised
            errors.append(f"metadata: {type(exc).__name__}: {str(exc)[:200]}")
        c2pa = self._c2pa(data, deadline, errors)
        found = declarations(c2pa, metadata)
        answer = {"declared": strongest(found), "declarations": found, "c2pa": c2pa, "metadata": metadata}
        if truncated:
            answer["truncated"] = sorted(set(truncated))
        if errors:
            answer["error"] = "; ".join(errors)
        return answer

    def _c2pa(self, data: bytes, deadline: float, errors: list[str]) -> dict:
        if b"c2pa" not in data:  # every C2PA manifest store is labelled so: most uploads stop here
            return {"present": False}
        if self.c2pa is None:
            errors.append(self.c2pa_unavailable)
            return {"present": None}
        try:
            return self.c2pa.read(data, deadline - time.monotonic())
        except Exception as exc:  # OverBudget, or the library's C2paError for a manifest it cannot parse
            errors.append(f"c2pa: {str(exc)[:300]}")
            return {"present": None}


def image_metadata(data: bytes, deadline: float, truncated: list[str]) -> dict:
    found = walk(data, deadline)
    truncated += found.truncated
    metadata = {"text": found.text} if found.text else {}
    if found.exif and (fields := exif_fields(found.exif, truncated)):
        metadata["exif"] = fields
    if found.xmp and (fields := xmp_fields(found.xmp, truncated)):
        metadata["xmp"] = fields
    return metadata


def video_tags(data: bytes, container: str, truncated: list[str]) -> dict:
    """The container's tags and its video stream's (an encoder, a phone's make, model and software,
    a creation time), read from the header only."""
    import av

    demuxer = "matroska" if container in ("webm", "mkv") else "mov"
    with av.open(io.BytesIO(data), mode="r", format=demuxer) as opened:
        tags = dict(opened.metadata)
        if opened.streams.video:
            tags.update({f"video.{k}": v for k, v in opened.streams.video[0].metadata.items()})
    if len(tags) > MAX_TAGS:
        truncated.append("tags")
    kept = {str(k)[:80]: capped(str(v), f"tags.{k}", truncated) for k, v in list(tags.items())[:MAX_TAGS]}
    return {"tags": kept} if kept else {}


def main(argv: list[str] | None = None) -> None:
    """``python -m handler.provenance photo.jpg [clip.mp4 ...]``: what files declare, without a server."""
    import argparse

    parser = argparse.ArgumentParser(description="Print what image or video files declare about their origin (C2PA, metadata).")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--trust-anchors", type=Path, help="a PEM file of trusted C2PA root certificates")
    parser.add_argument("--budget-ms", type=float, default=DEFAULT_BUDGET_S * 1000)
    args = parser.parse_args(argv)
    from runtime.video import container_of

    reader = ProvenanceReader(args.budget_ms / 1000, args.trust_anchors)
    for path in args.paths:
        data = path.read_bytes()
        print(json.dumps({"path": str(path), **reader.read(data, container_of(data))}, indent=2))


if __name__ == "__main__":
    main()
