"""What an upload says about where it came from, reported beside the pixel verdict, never instead of it.

Read from the raw bytes of every image (and every video whose container carries metadata):

- **C2PA** (Content Credentials) through c2pa-python (the c2pa-rs library): whether a manifest is
  present, its claim generator, actions and digital source types, the signer as it names itself,
  the validation state with its failure codes, and whether the signer is on a configured trust list.
- **Generator metadata** as found, with its keys: PNG text chunks (``parameters``, ``prompt``,
  ``workflow``, ...), EXIF ``Software``/``Make``/``Model`` (and ``ImageDescription``,
  ``UserComment``), XMP's IPTC ``DigitalSourceType`` and ``CreatorTool``; a video's container tags.
- **declared**: one word from explicit declarations only (``provenance_declared.DECLARED``). It never
  changes the model's label or P(fake); where the two disagree, the answer says so
  (``provenance_declared.beside_verdict``).

None of it is proof: metadata is stripped by most uploads and forged by anyone, and a C2PA signer
that is on no trust list is only a claim. Hostile metadata costs bounded work: every walk and value
is capped, the C2PA read runs on one helper thread under a time budget, and any failure becomes
``provenance.error`` while the verdict is still given. Nothing is fetched from the network (remote
manifests and OCSP are off). These modules travel inside the model archive: no TorchServe import.

One job per module: ``handler/provenance_metadata.py`` reads the metadata blocks,
``handler/provenance_c2pa.py`` the C2PA manifest, ``handler/provenance_declared.py`` sums them up
in ``declared`` and sets that beside the verdict; this module's ``ProvenanceReader`` runs them under
the time budget.

    python -m handler.provenance photo.heic clip.mov [--trust-anchors roots.pem]   # files on disk, as JSON
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping

from handler.provenance_c2pa import C2paReader
from handler.provenance_declared import declarations, strongest
from handler.provenance_metadata import OverBudget, image_metadata, video_tags
from runtime.handler_settings import DEFAULT_PROVENANCE_BUDGET_S, HandlerSettings

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_S = DEFAULT_PROVENANCE_BUDGET_S


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
