"""C2PA (Content Credentials) through c2pa-python (the c2pa-rs library): whether a manifest is
present, its claim generator, actions and digital source types, the signer as it names itself, the
validation state with its failure codes, and whether the signer is on a configured trust list.

A signer on no trust list is only a claim. The read runs on one helper thread under a time budget;
nothing is fetched from the network (remote manifests and OCSP are off). Ships inside the model
archive: no TorchServe import.
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from handler.provenance_declared import source_type_name
from handler.provenance_metadata import OverBudget

MAX_ACTIONS = 16


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
