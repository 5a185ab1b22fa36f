"""Content Credentials (C2PA) inside every output, as a verifier sees them: who signed, what was
done to which input, the record on chain they point at; an edited file fails its hard binding;
a signing failure charges nothing and leaves nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import stat
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import pyvips
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from PIL import Image
from PIL.ExifTags import IFD

from app import create_app
from payments import l402
from provenance.chain import RecordFields
from provenance.cid import hash_bytes
from provenance.content_credentials import (
    TRAINED_ALGORITHMIC_MEDIA,
    Claim,
    ContentCredentialsSigner,
    RecordKey,
    StageAction,
    read_credentials,
)
from provenance.errors import ContentCredentialsError, SigningIdentityError
from provenance.signing_identity import LOCAL_KEY, load_identity, local_identity, make_local_identity
from service.config import Settings
from service.verify import credential_checks

from .helpers import natural_image
from .test_metadata_policy import camera_photo
from .test_provenance import paid_job, wait_confirmed

MODEL = "realesr-animevideov3"
TWICE = json.dumps([{"model": MODEL, "scale": 2}, {"model": MODEL, "scale": 2}])


def png(seed: int = 0, size: tuple[int, int] = (24, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(natural_image(*size, seed=seed)).save(buffer, "PNG")
    return buffer.getvalue()


def result_of(client: TestClient, job: dict, credential: str) -> bytes:
    return client.get(job["output"]["url"], headers={"Authorization": credential}).content


# ------------------------------------------------------------------ the signing identity


def test_a_local_signer_is_made_once_private_and_issued_by_its_own_ca(tmp_path: Path) -> None:
    first = local_identity(tmp_path / "signing")
    again = local_identity(tmp_path / "signing")
    assert again.certificate_chain == first.certificate_chain and again.private_key == first.private_key
    assert first.local and first.algorithm == "es256"
    assert stat.S_IMODE((tmp_path / "signing").stat().st_mode) == 0o700
    for path in (tmp_path / "signing").glob("*.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    leaf, ca = x509.load_pem_x509_certificates(first.certificate_chain)
    assert leaf.issuer == ca.subject and leaf.subject != leaf.issuer  # not self-signed: C2PA refuses those
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert "not a trusted authority" in first.describe()["issuer"]
    # a damaged key file is an error that says what to do; the files are never overwritten
    (tmp_path / "signing" / LOCAL_KEY).write_text("damaged")
    with pytest.raises(SigningIdentityError, match="move the folder away"):
        local_identity(tmp_path / "signing")
    assert (tmp_path / "signing" / LOCAL_KEY).read_text() == "damaged"


def test_a_local_signer_that_runs_out_is_retired_and_replaced(tmp_path: Path, monkeypatch) -> None:
    import provenance.signing_identity as signing

    monkeypatch.setattr(signing, "LOCAL_VALIDITY", dt.timedelta(hours=1))
    old = local_identity(tmp_path / "signing")
    monkeypatch.undo()
    new = local_identity(tmp_path / "signing")
    assert new.certificate_chain != old.certificate_chain
    (retired,) = (tmp_path / "signing").glob("expired-*")
    assert (retired / "ca.pem").read_bytes() == old.local_ca  # files it signed can still be checked
    assert local_identity(tmp_path / "signing").certificate_chain == new.certificate_chain


def _operator_certificate(
    folder: Path, key: object, ca_key: ec.EllipticCurvePrivateKey, usage: bool = True, name: str = "chain.pem"
) -> Path:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Operator Studio")])
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Operator CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
    )
    if usage:  # the extended key usage C2PA requires of a signer
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    leaf = (
        builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)  # type: ignore[attr-defined]
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = folder / name
    path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return path


def _key_file(folder: Path, key: object, name: str) -> Path:
    path = folder / name
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def test_an_operator_certificate_is_checked_before_anything_is_signed(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP384R1())
    chain = _operator_certificate(tmp_path, key, ca_key)
    identity = load_identity(chain, _key_file(tmp_path, key, "key.pem"))
    assert identity.algorithm == "es384" and not identity.local
    ContentCredentialsSigner(identity).check()  # a CA-issued certificate with the right usages signs
    assert identity.describe()["subject"] == "CN=Operator Studio"
    other = _key_file(tmp_path, ec.generate_private_key(ec.SECP256R1()), "other.pem")
    with pytest.raises(SigningIdentityError, match="is not the key of the first certificate"):
        load_identity(chain, other)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SigningIdentityError, match="must be an EC key"):
        load_identity(_operator_certificate(tmp_path, rsa_key, ca_key), _key_file(tmp_path, rsa_key, "rsa.pem"))
    with pytest.raises(SigningIdentityError, match="cannot read"):
        load_identity(tmp_path / "missing.pem", other)
    # only one of the two settings, or a trust anchor that is no certificate: refused at start
    with pytest.raises(SigningIdentityError, match="set both"):
        create_app(Settings(data_dir=tmp_path / "data", signing_certificate=chain))
    (tmp_path / "anchor.pem").write_bytes(b"\xff not a certificate")
    with pytest.raises(SigningIdentityError, match="not PEM CA certificates"):
        create_app(Settings(data_dir=tmp_path / "data", trust_anchors=[tmp_path / "anchor.pem"]))
    # a certificate c2pa refuses (no extended key usage) is refused at start too
    unusable = _operator_certificate(tmp_path, key, ca_key, usage=False, name="no-eku.pem")
    with pytest.raises(SigningIdentityError, match="cannot sign Content Credentials"):
        create_app(Settings(data_dir=tmp_path / "data", signing_certificate=unusable, signing_key=tmp_path / "key.pem"))


# ------------------------------------------------------------------ signing and reading


def _claim(**record) -> Claim:
    key = dict(payment_hash="aa" * 32, input_cid="bafkin", input_sha256="bb" * 32, registry="0xR", chain_id=7)
    return Claim(
        "Satscale 1.0", "1.0", "out.png", "in.png", (StageAction("m", "cc" * 32, 4),), RecordKey(**(key | record))
    )


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_every_output_format_is_signed_and_an_edit_breaks_the_binding(tmp_path: Path, fmt: str) -> None:
    identity = make_local_identity(tmp_path / "id")
    source, target = tmp_path / "in.png", tmp_path / f"out.{fmt}"
    source.write_bytes(png(1))
    pyvips.Image.new_from_buffer(png(2, (40, 48)), "").write_to_file(str(target))
    before = target.read_bytes()
    ContentCredentialsSigner(identity).sign(target, fmt, _claim(), source, "png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id", "in.png", f"out.{fmt}"]  # nothing left beside it
    signed = target.read_bytes()
    assert signed != before and pyvips.Image.new_from_buffer(signed, "").width == 48  # the same image
    found = read_credentials(target, fmt)
    assert found.state == "valid" and found.intact and found.failures == ()
    assert found.signer["common_name"] == "Satscale content credentials"
    assert [a["action"] for a in found.actions] == ["c2pa.opened", "c2pa.resized"]
    assert found.actions[1]["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert found.ingredient == {
        "title": "in.png",
        "format": "image/png",
        "instance_id": f"satscale:sha256:{'bb' * 32}",
        "sha256": "bb" * 32,
        "cid": "bafkin",
        "has_credentials": False,
    }
    # the record's key; an unknown job id is left out, not written as null
    assert found.record == {
        "payment_hash": "aa" * 32, "input_cid": "bafkin", "input_sha256": "bb" * 32, "registry": "0xR", "chain_id": 7
    }  # fmt: skip
    # trusted once its CA is an anchor; not by someone else's CA
    assert read_credentials(target, fmt, [identity.local_ca]).state == "trusted"
    assert read_credentials(target, fmt, [make_local_identity(tmp_path / "other").local_ca]).state == "valid"
    # one changed byte of pixel data: the hard binding fails, and the reader says so
    edited = bytearray(signed)
    pixels = {  # a byte inside each format's compressed pixel data
        "png": signed.find(b"IDAT") + 10,
        "jpeg": signed.rfind(b"\xff\xda") + 20,
        "webp": signed.find(b"VP8") + 20,
        "tiff": 300,  # libvips writes the strips right after the header
    }[fmt]
    edited[pixels] ^= 0xFF
    broken = read_credentials(bytes(edited), fmt)
    assert broken.state == "invalid" and not broken.intact
    assert "assertion.dataHash.mismatch" in {code for code, _ in broken.failures}


def test_a_file_without_credentials_reads_as_none(tmp_path: Path) -> None:
    assert read_credentials(png(), "png").state == "none" and not read_credentials(png(), "png").present


def test_a_signing_failure_leaves_the_file_unsigned_and_nothing_beside_it(tmp_path: Path) -> None:
    identity = make_local_identity(tmp_path / "id")
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(png(1))
    target.write_bytes(b"not an image at all")
    with pytest.raises(ContentCredentialsError, match="signing Content Credentials failed"):
        ContentCredentialsSigner(identity).sign(target, "png", _claim(), source, "png")
    assert target.read_bytes() == b"not an image at all"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id", "in.png", "out.png"]


def test_the_checks_name_every_claim_that_disagrees_with_the_record(tmp_path: Path) -> None:
    """A manifest that points at another record (or names other weights) fails the cross-check."""
    identity = make_local_identity(tmp_path / "id")
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(png(1))
    target.write_bytes(png(2))
    ContentCredentialsSigner(identity).sign(target, "png", _claim(payment_hash="ff" * 32), source, "png")
    found = read_credentials(target, "png")
    fields = RecordFields("aa" * 32, "bafkin", "bafkout", "bb" * 32, "dd" * 32, "m", "cc" * 32, "00" * 32)
    chain = SimpleNamespace(address="0xR", chain_id=7)
    checks = {c.name: c for c in credential_checks(found, fields, chain, None)}  # type: ignore[arg-type]
    assert checks["content credentials"].ok  # intact, but ...
    assert not checks["credentials match the record"].ok
    assert f"payment_hash '{'ff' * 32}', the record's is '{'aa' * 32}'" in checks["credentials match the record"].detail
    assert checks["credentials name the models"].ok
    other = RecordFields("ff" * 32, "bafkin", "bafkout", "bb" * 32, "dd" * 32, "m", "ee" * 32, "00" * 32)
    wrong = {c.name: c for c in credential_checks(found, other, chain, None)}  # type: ignore[arg-type]
    assert wrong["credentials match the record"].ok and not wrong["credentials name the models"].ok


# ------------------------------------------------------------------ through the service


def test_a_paid_output_carries_credentials_that_point_at_its_record(tmp_path: Path, registry, compact) -> None:
    image = png()
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, image)
        job = wait_confirmed(client, body["job_id"], credential)
        result = result_of(client, job, credential)
        chain = job["provenance"]["chain"]

        # the CID, the sha256 and the chain record are of the signed file
        assert job["provenance"]["output_cid"] == hash_bytes(result, cid_version=1).cid
        assert job["output"]["sha256"] == hashlib.sha256(result).hexdigest()
        found = read_credentials(result, "png")
        assert found.state == "valid"
        weights_sha256 = compact.info.weights_sha256
        resized = found.actions[1]
        assert (resized["action"], resized["model"], resized["weights_sha256"]) == (
            "c2pa.resized",
            MODEL,
            weights_sha256,
        )
        assert found.ingredient is not None and found.ingredient["sha256"] == hashlib.sha256(image).hexdigest()
        assert found.ingredient["cid"] == job["provenance"]["input_cid"]
        assert found.record == {
            "payment_hash": body["payment_hash"],
            "input_cid": job["provenance"]["input_cid"],
            "input_sha256": hashlib.sha256(image).hexdigest(),
            "registry": chain["registry"],
            "chain_id": chain["chain_id"],
        }  # (no job id: an unpublished job found by its output's hash must not name its job)
        # the job document shows the same, read back from the file when it was signed
        assert job["content_credentials"]["record"] == found.record
        assert job["content_credentials"]["signer"]["common_name"] == "Satscale content credentials"

        report = client.get(f"/v1/provenance/{job['output']['sha256']}").json()
        assert report["verified"], report
        (record,) = report["records"]
        checks = {c["name"]: c for c in record["checks"]}
        assert (
            checks["content credentials"]["ok"]
            and "not an authority this server trusts" in checks["content credentials"]["detail"]
        )
        assert checks["credentials match the record"]["ok"] and checks["credentials name the models"]["ok"]
        assert record["credentials"]["state"] == "valid"
        # a stranger with the job id (no credential, or a forged one) sees no credentials
        stranger = client.get(f"/v1/upscales/{body['job_id']}").json()
        assert "content_credentials" not in stranger and "output" not in stranger
        forged = client.get(f"/v1/upscales/{body['job_id']}", headers={"Authorization": credential[:-4] + "0000"})
        assert "content_credentials" not in forged.json()
        # metadata in the file: the parameters as XMP
        xmp = bytes(pyvips.Image.new_from_buffer(result, "").get("xmp-data"))
        assert f"<satscale:WeightsSHA256>{weights_sha256}</satscale:WeightsSHA256>".encode() in xmp


def test_with_its_ca_as_a_trust_anchor_the_server_reports_trusted(tmp_path: Path, registry) -> None:
    data = tmp_path / "data"
    anchor = local_identity(data / "signing").local_ca
    assert anchor is not None
    (tmp_path / "ca.pem").write_bytes(anchor)
    with TestClient(create_app(Settings(data_dir=data, trust_anchors=[tmp_path / "ca.pem"]), registry)) as client:
        body, credential = paid_job(client, png(3))
        job = wait_confirmed(client, body["job_id"], credential)
        assert job["content_credentials"]["state"] == "trusted"
        report = client.get(f"/v1/provenance/{job['output']['sha256']}").json()
        check = next(c for c in report["records"][0]["checks"] if c["name"] == "content credentials")
        assert check["ok"] and "a signer this server trusts" in check["detail"]


def test_an_unpublished_jobs_credentials_stay_with_its_owner(tmp_path: Path, registry) -> None:
    """Found by its input's hash, an unpublished job's record is withheld: no manifest, no output."""
    image = png(10)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, image, publish=False)
        wait_confirmed(client, body["job_id"], credential)
        report = client.get(f"/v1/provenance/{hashlib.sha256(image).hexdigest()}").json()
    (record,) = report["records"]
    assert record["withheld"] and record["credentials"] is None
    assert not any(check["name"].startswith("credentials") for check in record["checks"])


def test_an_upscale_of_a_signed_output_keeps_the_chain_of_edits(tmp_path: Path, registry) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, png(4))
        first = result_of(client, wait_confirmed(client, body["job_id"], credential), credential)
        again, credential2 = paid_job(client, first, publish=False)  # private: everything travels
        second = result_of(client, wait_confirmed(client, again["job_id"], credential2), credential2)
    found = read_credentials(second, "png")
    assert found.intact and found.ingredient is not None
    assert found.ingredient["has_credentials"] and found.ingredient["sha256"] == hashlib.sha256(first).hexdigest()


def test_a_pipeline_names_every_stage(tmp_path: Path, registry) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        response = client.post(
            "/v1/upscales", files={"image": ("a.png", png(5, (12, 16)), "image/png")}, data={"pipeline": TWICE}
        )
        body = response.json()
        preimage = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}).json()
        macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
        credential = f"L402 {macaroon}:{preimage['preimage']}"
        job = wait_confirmed(client, body["job_id"], credential)
        found = job["content_credentials"]
        assert [(a["action"], a["model"]) for a in found["actions"]] == [
            ("c2pa.opened", None),
            ("c2pa.resized", MODEL),
            ("c2pa.resized", MODEL),
        ]
        report = client.get(f"/v1/provenance/{job['output']['sha256']}").json()
        assert report["verified"], report


def test_a_signing_failure_fails_the_job_and_returns_the_payment(tmp_path: Path, registry, monkeypatch) -> None:
    import c2pa

    def half_written(self, signer, mime, source, target):  # c2pa fails with its output half written
        target.write(source.read(100))
        raise c2pa.C2paError("the HSM is unplugged")

    monkeypatch.setattr(c2pa.Builder, "sign", half_written)
    data = tmp_path / "data"
    with TestClient(create_app(Settings(data_dir=data), registry)) as client:
        body = client.post(
            "/v1/upscales", files={"image": ("a.png", png(6), "image/png")}, data={"model": MODEL, "scale": "2"}
        ).json()
        paid = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True}).json()
        assert "preimage" not in paid  # the hold invoice was cancelled, not settled
        deadline = time.monotonic() + 60
        while (job := client.get(f"/v1/upscales/{body['job_id']}").json())["status"] != "failed":
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert "the HSM is unplugged" in job["error"] and not job["charged"]
        assert job["invoice_status"] == "canceled"
        assert list((data / "outputs").iterdir()) == []  # no unsigned output, no temp file


def test_a_published_photo_loses_its_location_and_a_private_one_keeps_it(tmp_path: Path, registry) -> None:
    photo = camera_photo(tmp_path / "phone.jpg").read_bytes()
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        outputs = {}
        for publish in (True, False):
            response = client.post(
                "/v1/upscales",
                files={"image": ("phone.jpg", photo, "image/jpeg")},
                data={"model": MODEL, "scale": "2", "publish": str(publish).lower(), "format": "jpeg"},
            )
            body = response.json()
            paid = client.post("/v1/dev/pay", json={"payment_request": body["payment_request"], "wait": True})
            macaroon = l402.parse_challenge(response.headers["WWW-Authenticate"]).macaroon
            credential = f"L402 {macaroon}:{paid.json()['preimage']}"
            outputs[publish] = result_of(client, wait_confirmed(client, body["job_id"], credential), credential)
    for publish, data in outputs.items():
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
        assert exif.get(0x010F) == "SatscaleCam"  # the camera stays either way
        assert (exif.get_ifd(IFD.GPSInfo) == {}) is publish
        assert read_credentials(data, "jpeg").intact


def _with_damaged_manifest(signed: bytes) -> bytes:
    """The PNG with its C2PA chunk (caBX) cut short, CRC fixed: a valid PNG a decoder accepts."""
    at = signed.find(b"caBX") - 4
    length = int.from_bytes(signed[at : at + 4], "big")
    data = signed[at + 8 : at + 8 + length][:200]
    chunk = len(data).to_bytes(4, "big") + b"caBX" + data + zlib.crc32(b"caBX" + data).to_bytes(4, "big")
    return signed[:at] + chunk + signed[at + 12 + length :]


def test_an_input_with_a_damaged_manifest_is_upscaled_and_signed(tmp_path: Path, registry) -> None:
    """An upload's own manifest cannot be read: the output describes the input without it (the job
    does not fail after its engine ran)."""
    identity = make_local_identity(tmp_path / "id")
    signed = tmp_path / "signed.png"
    signed.write_bytes(png(7))
    (tmp_path / "in.png").write_bytes(png(8))
    ContentCredentialsSigner(identity).sign(signed, "png", _claim(), tmp_path / "in.png", "png")
    damaged = _with_damaged_manifest(signed.read_bytes())
    assert read_credentials(damaged, "png").state == "invalid"
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, damaged)
        job = wait_confirmed(client, body["job_id"], credential)
        found = read_credentials(result_of(client, job, credential), "png")
    assert found.intact and found.ingredient is not None
    assert found.ingredient["sha256"] == hashlib.sha256(damaged).hexdigest()
    assert not found.ingredient["has_credentials"]


def test_a_published_output_does_not_carry_the_inputs_own_manifest(tmp_path: Path, registry) -> None:
    """A camera's manifest may hold a location: under `auto` a public output describes its input
    without it (a private one keeps the chain of edits, tested above)."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"), registry)) as client:
        body, credential = paid_job(client, png(9))
        first = result_of(client, wait_confirmed(client, body["job_id"], credential), credential)
        again, credential2 = paid_job(client, first, publish=True)
        second = read_credentials(
            result_of(client, wait_confirmed(client, again["job_id"], credential2), credential2), "png"
        )
    assert second.intact and second.ingredient is not None and not second.ingredient["has_credentials"]
