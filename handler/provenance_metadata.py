"""What an upload's metadata says, read from its raw bytes under caps (``handler/provenance.py``
gathers it with C2PA and the declarations): PNG text chunks, JPEG segments and WebP chunks walked
here, other formats through PIL's header parse; EXIF ``Software``/``Make``/``Model`` (and
``ImageDescription``, ``UserComment``), XMP's ``DigitalSourceType`` and ``CreatorTool``; a video's
container tags.

Hostile metadata costs bounded work: every walk and value is capped, and a walk past its deadline
raises ``OverBudget``. Ships inside the model archive: no TorchServe import.
"""

from __future__ import annotations

import io
import re
import struct
import time
import warnings
import zlib
from dataclasses import dataclass, field

from PIL import Image

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
MAX_TAGS = 32  # video container tags


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


# --- what the answer reports ----------------------------------------------------------------------


def image_metadata(data: bytes, deadline: float, truncated: list[str]) -> dict:
    """An image's ``text``, ``exif`` and ``xmp`` fields, each only where found; what was cut goes to ``truncated``."""
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
