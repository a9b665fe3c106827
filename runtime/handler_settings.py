"""The handler's settings: the ``handler:`` section of an archive's ``model-config.yaml``, typed.

One schema, ``HandlerSettings`` (a frozen dataclass), read on both sides of the archive: the packer
(``export/archive.py``: ``build_archive``, ``repack``; ``export/pack.py``) writes the section through
``checked_section`` and the worker (``handler/deepfake_handler.py``) reads it back through
``HandlerSettings.from_model_config``. An unknown or misspelt key is refused on either side with one
line naming it and the nearest valid key, and each value is converted to its field's type or refused
with one line saying which key wanted what. A key that is absent, or null, keeps its default; the
defaults are the ones the handler always had.

It lives in ``runtime/`` (which every archive carries whole) because both ``export/`` and the
handler read it, and imports nothing beyond ``runtime``: no TorchServe, nothing host-only.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Mapping

from runtime.decoding import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from runtime.video import DEFAULT_FRAMES, DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS

# Crops per forward pass: a video's frames are split into passes of this size (bounded memory; an
# image batch alone, 8 requests x 5 faces, fits in one and goes first).
DEFAULT_MAX_CROPS_PER_PASS = 64
DEFAULT_MAX_FACES = 5
DEFAULT_PROVENANCE_BUDGET_S = 0.5  # C2PA and metadata reading per upload (handler/provenance.py)
DEFAULT_RECORDS_SPOOL_MB = 256  # about 550,000 rows (~490 bytes each): hours of traffic at tens of requests/s

TRUE_WORDS = ("true", "on", "yes", "1")
FALSE_WORDS = ("false", "off", "no", "0")


class SettingsError(ValueError):
    """A ``handler:`` setting the schema refuses; the message is one line naming the key."""


@dataclass(frozen=True)
class HandlerSettings:
    """Every key the ``handler:`` section may hold, with its type and default."""

    # the model: the backend (None: detected from the files), its precision and artifact file
    backend: str | None = None
    precision: str = "fp32"
    artifact: str | None = None  # None: the backend's canonical file name (runtime/artifacts.py)
    min_batch: int = 1  # the forward pass's batch sizes the artifact was exported for
    max_batch: int | None = None  # None or 0: no upper bound
    threads: int = 1  # torch, onnxruntime and the image decoders' threads per worker
    # input limits
    max_faces: int = DEFAULT_MAX_FACES
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    video_frames: int = DEFAULT_FRAMES
    max_video_seconds: float = DEFAULT_MAX_SECONDS
    max_video_bytes: int = DEFAULT_MAX_BYTES
    max_crops_per_pass: int = DEFAULT_MAX_CROPS_PER_PASS
    # provenance (handler/provenance.py)
    provenance: bool = True
    provenance_budget_ms: float = DEFAULT_PROVENANCE_BUDGET_S * 1000
    c2pa_trust_anchors: str | None = None  # a PEM file, relative to the model folder or absolute
    c2pa_trust_list: str | None = None
    # prediction records (handler/records_settings.py; None: the environment, config.properties, the default)
    records_url: str | None = None
    records_spool: str | None = None
    records_spool_mb: float | None = None
    records_keep_days: float | None = None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, section: Mapping | None, where: str = "handler settings") -> "HandlerSettings":
        """The settings from a ``handler:`` section (absent or null keys keep their defaults);
        raises ``SettingsError`` on an unknown key or a value of the wrong type."""
        return cls(**checked_section(section, where))

    @classmethod
    def from_model_config(cls, model_config: Mapping | None) -> "HandlerSettings":
        """The settings from a whole model-config (as TorchServe hands the worker ``model_yaml_config``)."""
        section = (model_config or {}).get("handler") or {}
        return cls.from_mapping(section, "model-config.yaml, handler section")

    def records_config(self) -> dict[str, object]:
        """The ``records_*`` keys that are set, as ``handler/records_settings.py`` reads an archive's settings."""
        return {k: v for k in self.keys() if k.startswith("records_") and (v := getattr(self, k)) is not None}


def checked_section(section: Mapping | None, where: str = "handler settings") -> dict[str, Any]:
    """The keys of ``section`` that are set, each converted to its type (null values dropped);
    raises ``SettingsError`` with one line on an unknown key or a value that does not convert."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise SettingsError(f"{where}: expected a mapping of settings, got {type(section).__name__}")
    types_ = _field_types()
    checked = {}
    for key, value in section.items():
        if key not in types_:
            raise SettingsError(f"{where}: unknown setting {key!r}{_did_you_mean(str(key), list(types_))}")
        if value is not None:
            checked[key] = _convert(key, value, types_[key], where)
    return checked


def _did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid settings: {', '.join(valid)}"


def _field_types() -> dict[str, type]:
    """Each field's type with ``| None`` taken off (optional fields are the ones defaulting to None)."""
    hints = typing.get_type_hints(HandlerSettings)
    out = {}
    for f in fields(HandlerSettings):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        assert f.default is not MISSING, f.name  # every setting has a default
        out[f.name] = hint
    return out


def _convert(key: str, value: Any, kind: type, where: str) -> Any:
    def refuse(wanted: str) -> SettingsError:
        return SettingsError(f"{where}: {key} must be {wanted}, got {value!r}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return str(value).strip().lower() in TRUE_WORDS
        raise refuse("true or false")
    if kind is int:
        if isinstance(value, bool):
            raise refuse("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise refuse("an integer")
    if kind is float:
        if isinstance(value, bool):
            raise refuse("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise refuse("a number")
    if kind is str:
        if isinstance(value, bool):  # YAML reads a bare off/no/yes as a boolean
            raise SettingsError(f"{where}: {key} must be a string, got {value!r} (quote it in YAML: '{'off' if not value else 'on'}')")
        if isinstance(value, (str, int, float)):
            return str(value)
        raise refuse("a string")
    raise TypeError(f"no conversion for {kind}")  # a field of a type this module does not know
