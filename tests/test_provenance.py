"""Provenance beside the verdict (handler/provenance*.py), on files made here (tests/provenance_files.py):
a C2PA-signed AI-generated JPEG (throw-away CA: untrusted, valid), the same with its pixels changed
after signing (invalid: data hash mismatch), the CA as a trust list (trusted), a PNG with a
``parameters`` chunk, JPEGs with EXIF Software or Make/Model and with XMP; a video's container tags
and manifest. Then hostile metadata: oversized and deflate-bomb chunks, malformed and misplaced
manifests, a spent time budget, and a fuzz. The handler-level checks (the verdict is unchanged, a
failed read is ``provenance.error`` beside a verdict) are in the last section."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from skimage import data as skdata

from handler.provenance import ProvenanceReader
from handler.provenance_declared import DECLARED, beside_verdict
from handler.provenance_metadata import MAX_TEXT_ENTRIES, MAX_VALUE_CHARS
from provenance_files import (
    GENERATOR,
    IPTC,
    SIGNER,
    c2pa_signed,
    encode,
    jpeg_segments,
    jpeg_with_exif,
    pixels_changed_after_signing,
    png_with_parameters,
    throwaway_ca,
)
from test_fuzz_preprocessing import mutate

PARAMETERS = "portrait photo of a woman, studio light\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234, Model: sdxl"


@pytest.fixture(scope="module")
def face() -> Image.Image:
    return Image.fromarray(skdata.astronaut()).resize((256, 256))


@pytest.fixture(scope="module")
def signed(face) -> bytes:
    return c2pa_signed(encode(face, "JPEG", quality=90))


@pytest.fixture(scope="module")
def reader() -> ProvenanceReader:
    return ProvenanceReader()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def before_iend(png: bytes, *chunks: bytes) -> bytes:
    """The PNG with ``chunks`` after its image data, just before IEND (where PIL's header parse does not look)."""
    end = png.rindex(b"IEND") - 4
    return png[:end] + b"".join(chunks) + png[end:]


# --- C2PA ---------------------------------------------------------------------------------------


def test_a_signed_ai_generated_jpeg_reports_its_claim_and_an_untrusted_signer(reader, signed):
    provenance = reader.read(signed)
    c2pa = provenance["c2pa"]
    assert c2pa["present"] and c2pa["claim_generator"] == f"{GENERATOR} 1.0"
    assert c2pa["actions"] == [{"action": "c2pa.created", "digital_source_type": "trainedAlgorithmicMedia", "software_agent": GENERATOR}]
    assert c2pa["digital_source_types"] == ["trainedAlgorithmicMedia"]
    assert c2pa["signer"]["name"] == SIGNER
    # intact, but the signer is on no trust list: valid, untrusted, and said to be only a claim
    assert c2pa["validation"] == "valid" and c2pa["failures"] == ["signingCredential.untrusted"]
    assert c2pa["trusted"] is False and c2pa["trust_list"] is None and "only a claim" in c2pa["trust_note"]
    assert provenance["declared"] == "ai_generated"
    assert provenance["declarations"] == [{"source": "c2pa", "key": "c2pa.created digitalSourceType", "value": "trainedAlgorithmicMedia",
                                           "declares": "ai_generated", "validation": "valid"}]  # fmt: skip
    assert "error" not in provenance


def test_pixels_changed_after_signing_make_the_manifest_invalid(reader, signed):
    provenance = reader.read(pixels_changed_after_signing(signed))
    c2pa = provenance["c2pa"]
    assert c2pa["present"] and c2pa["validation"] == "invalid"
    assert "assertion.dataHash.mismatch" in c2pa["failures"]
    # the claim is still reported, marked with the failed validation
    assert provenance["declared"] == "ai_generated" and provenance["declarations"][0]["validation"] == "invalid"


def test_a_signer_on_the_configured_trust_list_is_trusted(signed, tmp_path):
    anchors = tmp_path / "test-root.pem"
    anchors.write_bytes(throwaway_ca().root_pem)
    c2pa = ProvenanceReader(trust_anchors=anchors, trust_list="deepfake-test-root").read(signed)["c2pa"]
    assert c2pa["validation"] == "trusted" and c2pa["trusted"] and c2pa["failures"] == []
    assert c2pa["trust_list"] == "deepfake-test-root" and "deepfake-test-root" in c2pa["trust_note"]
    untrusted = ProvenanceReader(trust_anchors=anchors).read(c2pa_signed(encode(Image.new("RGB", (64, 64)), "PNG"), "image/png"))
    assert untrusted["c2pa"]["trusted"]  # the same CA signs every test file: the list is named after its file
    assert untrusted["c2pa"]["trust_list"] == "test-root.pem"


@pytest.mark.parametrize("source_type, declared", [("compositeWithTrainedAlgorithmicMedia", "ai_edited"),
                                                   ("digitalCapture", "camera"), ("algorithmicMedia", "none")])
def test_each_digital_source_type_declares_its_kind(reader, face, source_type, declared):
    provenance = reader.read(c2pa_signed(encode(face, "PNG"), "image/png", source_type))
    assert provenance["c2pa"]["digital_source_types"] == [source_type]
    assert provenance["declared"] == declared  # algorithmicMedia (no trained model) is reported, not summarised


def test_an_unsigned_file_has_no_manifest_and_declares_nothing(reader, face):
    provenance = reader.read(encode(face, "JPEG"))
    assert provenance == {"declared": "none", "declarations": [], "c2pa": {"present": False}, "metadata": {}}


# --- generator metadata -------------------------------------------------------------------------


def test_png_parameters_chunk_is_returned_and_declares_ai_generation(reader, face):
    provenance = reader.read(png_with_parameters(face, PARAMETERS))
    assert provenance["metadata"] == {"text": {"parameters": PARAMETERS}}
    assert provenance["declared"] == "ai_generated"
    assert provenance["declarations"] == [{"source": "png", "key": "parameters", "declares": "ai_generated"}]


def test_compressed_and_late_png_text_chunks_are_read(reader, face):
    """ComfyUI's prompt and workflow, one compressed (iTXt) and one after the image data."""
    info = PngInfo()
    info.add_itxt("prompt", '{"3": {"class_type": "KSampler"}}', zip=True)
    png = before_iend(encode(face, "PNG", pnginfo=info), png_chunk(b"tEXt", b'workflow\x00{"nodes": []}'))
    provenance = reader.read(png)
    assert provenance["metadata"]["text"] == {"prompt": '{"3": {"class_type": "KSampler"}}', "workflow": '{"nodes": []}'}
    assert provenance["declared"] == "ai_generated"


def test_exif_software_is_reported_and_declares_nothing_by_itself(reader, face):
    provenance = reader.read(jpeg_with_exif(face, Software="Adobe Photoshop 25.0 (Windows)"))
    assert provenance["metadata"] == {"exif": {"Software": "Adobe Photoshop 25.0 (Windows)"}}
    assert provenance["declared"] == "none"  # cameras write their firmware there too


def test_exif_make_and_model_declare_a_camera(reader, face):
    provenance = reader.read(jpeg_with_exif(face, Make="Canon", Model="Canon EOS R5", Software="Firmware 1.8.1"))
    assert provenance["metadata"]["exif"] == {"Make": "Canon", "Model": "Canon EOS R5", "Software": "Firmware 1.8.1"}
    assert provenance["declared"] == "camera"


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "WEBP", "TIFF"])
def test_exif_is_read_from_every_accepted_container(reader, face, fmt):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15 Pro"
    provenance = reader.read(encode(face, fmt, exif=exif.tobytes()))
    assert provenance["metadata"]["exif"] == {"Make": "Apple", "Model": "iPhone 15 Pro"}
    assert provenance["declared"] == "camera"


def test_xmp_digital_source_type_and_exif_user_comment(reader, face):
    """What stock sites and editors write (IPTC's DigitalSourceType in XMP), and what AUTOMATIC1111
    writes into a JPEG (its settings in EXIF UserComment, UTF-16 after an 8-byte code)."""
    xmp = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           f'<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
           f'Iptc4xmpExt:DigitalSourceType="{IPTC}compositeWithTrainedAlgorithmicMedia" xmp:CreatorTool="Adobe Photoshop 25.0"/>'
           f"</rdf:RDF></x:xmpmeta>").encode()  # fmt: skip
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + PARAMETERS.encode("utf-16-be")
    provenance = reader.read(encode(face, "JPEG", xmp=xmp, exif=exif))
    assert provenance["metadata"]["xmp"] == {"DigitalSourceType": IPTC + "compositeWithTrainedAlgorithmicMedia",
                                             "CreatorTool": "Adobe Photoshop 25.0"}  # fmt: skip
    assert provenance["metadata"]["exif"] == {"UserComment": PARAMETERS}
    assert provenance["declared"] == "ai_edited"


def test_a_videos_container_tags_and_manifest(reader):
    from fractions import Fraction

    import av
    from video_clips import example_faces

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as output:
        output.metadata.update({"make": "Apple", "model": "iPhone 15"})
        stream = output.add_stream("libx264", rate=Fraction(4))
        stream.width, stream.height = 256, 256
        stream.pix_fmt = "yuv420p"
        for face in example_faces("fake")[:2]:
            for packet in stream.encode(av.VideoFrame.from_image(face)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    clip = buffer.getvalue()
    provenance = reader.read(clip, "mov")
    assert {"make": "Apple", "model": "iPhone 15"}.items() <= provenance["metadata"]["tags"].items()
    assert provenance["declared"] == "camera" and provenance["c2pa"] == {"present": False}
    signed = reader.read(c2pa_signed(clip, "video/quicktime"), "mov")
    assert signed["c2pa"]["validation"] == "valid" and signed["declared"] == "ai_generated"  # the strongest declaration


def test_the_command_line_reads_files_without_a_server(signed, tmp_path, capsys):
    import json

    from handler.provenance import main

    (tmp_path / "signed.jpg").write_bytes(signed)
    (tmp_path / "root.pem").write_bytes(throwaway_ca().root_pem)
    main([str(tmp_path / "signed.jpg"), "--trust-anchors", str(tmp_path / "root.pem")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["declared"] == "ai_generated" and printed["c2pa"]["trust_list"] == "root.pem"


# --- beside the verdict -------------------------------------------------------------------------


@pytest.mark.parametrize("declared, label, agrees", [("ai_generated", "fake", True), ("ai_generated", "real", False),
                                                     ("ai_edited", "real", False), ("camera", "real", True),
                                                     ("camera", "fake", False), ("edited", "fake", None), ("none", "real", None)])
def test_agreement_with_the_model_is_stated_never_imposed(declared, label, agrees):
    provenance = {"declared": declared, "declarations": [], "c2pa": {"present": False}, "metadata": {}}
    result = beside_verdict(provenance, label, 0.3 if label == "real" else 0.8, 0.5)
    assert result["declared"] == declared and result["agrees_with_model"] is agrees
    assert ("note" in result) == (agrees is False)
    if agrees is False:
        assert label in result["note"] and "does not change the verdict" in result["note"]
    assert {k: v for k, v in result.items() if k not in ("agrees_with_model", "note")} == provenance


# --- hostile metadata ---------------------------------------------------------------------------


def test_oversized_and_numerous_text_chunks_are_capped(reader, face):
    png = encode(face, "PNG")
    huge = png_chunk(b"tEXt", b"parameters\x00" + b"x" * (5 << 20))
    many = b"".join(png_chunk(b"tEXt", b"k%d\x00v" % i) for i in range(5000))
    provenance = reader.read(before_iend(png, huge, many))
    text = provenance["metadata"]["text"]
    assert len(text["parameters"]) == MAX_VALUE_CHARS and len(text) == MAX_TEXT_ENTRIES
    assert {"parameters", "text", "chunks"} <= set(provenance["truncated"])
    assert "error" not in provenance


def test_a_deflate_bomb_in_a_text_chunk_is_inflated_only_to_the_cap(reader, face):
    bomb = zlib.compress(b"A" * (200 << 20), 9)  # 200 MB of text in about 200 KB
    provenance = reader.read(before_iend(encode(face, "PNG"), png_chunk(b"zTXt", b"prompt\x00\x00" + bomb)))
    assert len(provenance["metadata"]["text"]["prompt"]) == MAX_VALUE_CHARS
    assert "prompt" in provenance["truncated"]


def test_a_malformed_manifest_is_an_error_beside_the_other_metadata(reader, signed, face):
    at = signed.index(b"\xff\xeb")  # the first APP11 segment: the manifest store
    broken = bytearray(jpeg_with_exif(face, Make="Canon"))
    manifest = bytearray(signed[at : jpeg_segments(signed)[1][2]])
    manifest[400] ^= 0xFF
    broken[2:2] = manifest
    provenance = reader.read(bytes(broken))
    assert provenance["error"].startswith("c2pa:") and provenance["c2pa"] == {"present": None}
    assert provenance["declared"] == "camera"  # what could be read still counts


@pytest.mark.parametrize("place", ["after_end_of_image", "png_text_chunk"])
def test_a_manifest_in_the_wrong_place_is_not_taken(reader, signed, face, place):
    store = b"".join(signed[start + 4 : end] for marker, start, end in jpeg_segments(signed) if marker == 0xEB)
    plain = bytearray(signed)
    for marker, start, end in reversed(jpeg_segments(signed)):
        if marker == 0xEB:
            del plain[start:end]
    data = bytes(plain) + store if place == "after_end_of_image" else before_iend(encode(face, "PNG"), png_chunk(b"tEXt", b"c2pa\x00" + store))
    provenance = reader.read(data)
    assert provenance["c2pa"]["present"] is False and provenance["declared"] == "none"


def test_a_spent_time_budget_is_an_error_and_the_read_still_returns(signed):
    provenance = ProvenanceReader(budget_s=0).read(signed)
    assert "time budget" in provenance["error"] and provenance["declared"] in DECLARED


FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def seeds(face, signed) -> list[bytes]:
    xmp = f'<x:xmpmeta><rdf:Description Iptc4xmpExt:DigitalSourceType="{IPTC}trainedAlgorithmicMedia"/></x:xmpmeta>'.encode()
    exif = Image.Exif()
    exif[0x0131], exif[0x010F] = "GIMP 2.10", "Nikon"
    return [signed, pixels_changed_after_signing(signed), png_with_parameters(face, PARAMETERS),
            c2pa_signed(encode(face, "PNG"), "image/png"), c2pa_signed(encode(face, "WEBP"), "image/webp"),
            encode(face, "JPEG", xmp=xmp, exif=exif), encode(face, "HEIF", exif=exif.tobytes()), encode(face, "AVIF", exif=exif.tobytes())]  # fmt: skip


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], database=None)  # fmt: skip
@given(seed=st.integers(0, 7), mutations=st.lists(st.tuples(
    st.sampled_from(["flip", "set", "extreme", "truncate", "insert", "delete", "duplicate"]),
    st.floats(0, 1, exclude_max=True), st.integers(0, 2**32 - 1)), min_size=1, max_size=6))
def test_mutated_files_never_raise(reader, seeds, seed, mutations):
    """Mutated manifests, chunks, segments and EXIF: an answer every time, any failure said in ``error``."""
    provenance = reader.read(mutate(seeds[seed], mutations))
    assert provenance["declared"] in DECLARED
    assert isinstance(provenance.get("error", ""), str) and isinstance(provenance["metadata"], dict)
    assert provenance["c2pa"]["present"] in (True, False, None)
