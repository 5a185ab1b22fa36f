"""Who signs the Content Credentials: an operator's certificate and key, or a local one.

C2PA signers are X.509 certificates. An operator with a certificate from a C2PA-trusted CA
names its chain and key in the settings. Without one, the first start makes a local CA and
a signing certificate under the data folder (the key never leaves it, and nothing is ever
committed): validators then report the credentials as intact but signed by an unknown
("untrusted") authority, which is the truth. Listing the local CA as a trust anchor
(content_credentials.TrustAnchors) makes them "trusted" where that is wanted.

What a C2PA validator requires of the signing certificate (c2pa-rs refuses to sign otherwise):
issued by a CA (not self-signed), KeyUsage digitalSignature, an extended key usage
(emailProtection here), subject and authority key identifiers.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import SigningIdentityError
from .ipfs import atomic_write_chunks

#: signing algorithms by key type (what c2pa calls them)
ALGORITHMS = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
LOCAL_CA = "ca.pem"
LOCAL_CERTS = "signer-chain.pem"
LOCAL_KEY = "signer-key.pem"
#: a local signer's certificate lasts this long (it is re-made when it runs out)
LOCAL_VALIDITY = dt.timedelta(days=5 * 365)


@dataclass(frozen=True)
class SigningIdentity:
    #: the signing certificate first, then its issuers (PEM)
    certificate_chain: bytes
    #: PKCS#8 PEM
    private_key: bytes
    algorithm: str
    #: made on this server at first start (not issued by any authority a validator knows)
    local: bool
    #: the local CA (PEM) when `local`: a verifier may list it as a trust anchor
    local_ca: bytes | None = None

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.certificate_chain)[0]

    def describe(self) -> dict:
        """The signer as a verifier shows it: subject, issuer, serial, validity."""
        cert = self.certificate
        return {
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "local": self.local,
        }


def _algorithm(key: object, source: str) -> str:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningIdentityError(f"{source}: the signing key must be an EC key (P-256, P-384 or P-521)")
    alg = ALGORITHMS.get(key.curve.name)
    if alg is None:
        raise SigningIdentityError(f"{source}: curve {key.curve.name} is not one C2PA signs with (P-256/384/521)")
    return alg


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_identity(certificate_chain: Path, private_key: Path) -> SigningIdentity:
    """An operator's signer: a PEM chain (signing certificate first) and its PEM key."""
    try:
        chain_pem = certificate_chain.read_bytes()
        key_pem = private_key.read_bytes()
    except OSError as exc:
        raise SigningIdentityError(f"cannot read the signing certificate or key: {exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # (TypeError: an encrypted key)
        where = f"{certificate_chain} / {private_key}"
        raise SigningIdentityError(f"{where}: not a PEM certificate chain and key: {exc}") from None
    alg = _algorithm(key, str(private_key))
    if certs[0].public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise SigningIdentityError(f"{private_key} is not the key of the first certificate in {certificate_chain}")
    _check_usable(certs[0], str(certificate_chain))
    return SigningIdentity(chain_pem, _pkcs8(key), alg, local=False)  # type: ignore[arg-type]


def _check_usable(cert: x509.Certificate, source: str) -> None:
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise SigningIdentityError(f"{source}: the signing certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise SigningIdentityError(f"{source}: the signing certificate's key usage lacks digitalSignature")


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, readable by this user only (mkstemp makes the temporary 0600; the rename keeps it)."""
    atomic_write_chunks(path, [data])


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Satscale (local, not a trusted authority)"),
        ]
    )


def make_local_identity(directory: Path, server_name: str = "Satscale") -> SigningIdentity:
    """A fresh local CA and an ES256 signing certificate it issued, written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{server_name} local signing CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + LOCAL_VALIDITY + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{server_name} content credentials"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + LOCAL_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca_pem
    private = _pkcs8(key)
    # the key first: a chain on disk always has its key beside it
    _write_private(directory / LOCAL_KEY, private)
    _write_private(directory / LOCAL_CERTS, chain)
    _write_private(directory / LOCAL_CA, ca_pem)
    return SigningIdentity(chain, private, "es256", local=True, local_ca=ca_pem)


def local_identity(directory: Path, server_name: str = "Satscale") -> SigningIdentity:
    """This server's local signer: the one made at first start, or a new one if there is none yet
    (or it ran out: the old one moves to expired-<date>/, so files it signed can still be checked
    against its CA). Files that exist but cannot be used are an error, never overwritten (the
    key is the only copy). Processes sharing the data folder make one signer, not two."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # the key's folder: this user's only
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        names = (LOCAL_CERTS, LOCAL_KEY, LOCAL_CA)
        if not (directory / LOCAL_CERTS).exists():
            # none yet (a key alone, from a first start cut short, never signed anything)
            return make_local_identity(directory, server_name)
        try:
            chain, key = (directory / LOCAL_CERTS).read_bytes(), (directory / LOCAL_KEY).read_bytes()
            certs = x509.load_pem_x509_certificates(chain)
            ca = certs[-1].public_bytes(serialization.Encoding.PEM)  # (ca.pem is a copy of it)
            loaded = serialization.load_pem_private_key(key, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SigningIdentityError(
                f"the local signer in {directory} cannot be read ({exc}); move the folder away to make a new one"
            ) from None
        if certs[0].public_key().public_numbers() != loaded.public_key().public_numbers():  # type: ignore[union-attr]
            raise SigningIdentityError(f"{directory / LOCAL_KEY} is not the key of {directory / LOCAL_CERTS}")
        if certs[0].not_valid_after_utc <= dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
            retired = directory / f"expired-{certs[0].not_valid_after_utc:%Y%m%d}"
            retired.mkdir(exist_ok=True)
            for name in names:
                if (directory / name).exists():
                    os.replace(directory / name, retired / name)
            return make_local_identity(directory, server_name)
        return SigningIdentity(chain, key, _algorithm(loaded, str(directory / LOCAL_KEY)), local=True, local_ca=ca)
