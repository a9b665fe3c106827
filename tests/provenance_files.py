"""Files that say where they came from, made here for the provenance tests: a JPEG signed with a C2PA
manifest by a throw-away CA (made with ``cryptography``; c2pa-rs then reads the signer as untrusted,
which is correct), the same file with its pixels changed after signing, a PNG with a generator's
``parameters`` chunk, a JPEG with EXIF Software, Make and Model."""

from __future__ import annotations

import datetime
import io
import struct
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from runtime.decoding import register_image_formats

register_image_formats()  # PIL writes HEIC too once pillow-heif's plugin is registered

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATOR = "Test Image Generator"
SIGNER = "Test Generator Signer"


@dataclass(frozen=True)
class ThrowawayCA:
    root_pem: bytes  # the throw-away root: a trust list of one
    chain_pem: bytes  # the signing certificate, then the root
    key_pem: bytes


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Deepfake Detector Tests")])  # fmt: skip


@lru_cache(maxsize=1)
def throwaway_ca() -> ThrowawayCA:
    """A root CA and a claim-signing certificate (ES256) valid for a month: what C2PA asks of a
    signer (digital signature key usage, an e-mail protection EKU, issued by a CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)  # fmt: skip
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(subject, issuer, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))  # fmt: skip

    root = (certificate(_name("Deepfake Detector Test Root"), _name("Deepfake Detector Test Root"), root_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True)
            .sign(root_key, hashes.SHA256()))  # fmt: skip
    leaf = (certificate(_name(SIGNER), root.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    return ThrowawayCA(root.public_bytes(pem), leaf.public_bytes(pem) + root.public_bytes(pem),
                  key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def c2pa_signed(data: bytes, mime: str = "image/jpeg", source_type: str = "trainedAlgorithmicMedia",
                action: str = "c2pa.created") -> bytes:  # fmt: skip
    """``data`` with a C2PA manifest declaring ``action`` with ``source_type``, signed by the test CA."""
    import c2pa

    ca = throwaway_ca()
    manifest = {
        "claim_generator_info": [{"name": GENERATOR, "version": "1.0"}],
        "title": "generated face",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": action, "digitalSourceType": IPTC + source_type, "softwareAgent": {"name": GENERATOR}}]}}],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, ca.chain_pem, ca.key_pem, None))
    settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}})
    out = io.BytesIO()
    with c2pa.Builder(manifest, context=c2pa.Context(settings=settings)) as builder:
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment before the start of scan."""
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((data[pos + 1], pos, pos + 2 + length))
        pos += 2 + length
    return segments


def pixels_changed_after_signing(signed: bytes) -> bytes:
    """The signed JPEG decoded, a rectangle painted over it and encoded again, with the original C2PA
    segments (APP11) put back in front: what an editor that keeps metadata produces."""
    manifest = b"".join(signed[start:end] for marker, start, end in jpeg_segments(signed) if marker == 0xEB)
    image = Image.open(io.BytesIO(signed)).convert("RGB")
    ImageDraw.Draw(image).rectangle((4, 4, image.width // 3, image.height // 3), fill=(200, 30, 30))
    edited = encode(image, "JPEG", quality=90)
    return edited[:2] + manifest + edited[2:]


def png_with_parameters(image: Image.Image, parameters: str) -> bytes:
    """A PNG as AUTOMATIC1111's web UI writes it: the generation settings in a ``parameters`` chunk."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    return encode(image, "PNG", pnginfo=info)


def jpeg_with_exif(image: Image.Image, **fields: str) -> bytes:
    """A JPEG whose EXIF IFD0 holds ``fields`` (Software, Make, Model, ...)."""
    tags = {"Software": 0x0131, "Make": 0x010F, "Model": 0x0110, "ImageDescription": 0x010E}
    exif = Image.Exif()
    for name, value in fields.items():
        exif[tags[name]] = value
    return encode(image, "JPEG", quality=90, exif=exif)
