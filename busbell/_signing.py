"""Ed25519 device keys: generate, PEM (PKCS#8) load/save, sign and verify."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from busbell._errors import KeyFileError, SignatureError

__all__ = ["DeviceKey", "PublicKey", "load_public_hex"]


class PublicKey:
    """An Ed25519 public key, as held in the device registry (hex of 32 raw bytes)."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyFileError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        self.raw = raw
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @property
    def hex(self) -> str:
        """Hex of the 32 raw bytes."""
        return self.raw.hex()

    def verify(self, signature: bytes, message: bytes) -> None:
        """Verify ``signature`` over ``message``.

        Raises:
            SignatureError: when it does not verify.
        """
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise SignatureError("signature does not verify") from None

    def verify_b64(self, signature_b64: str, message: bytes) -> None:
        """Verify a base64 signature; malformed base64 is a :class:`SignatureError` too."""
        try:
            # strict: only the base64 alphabet, padding exactly at the end (as
            # b64decode(validate=True), without its Python-level regex check)
            sig = binascii.a2b_base64(signature_b64, strict_mode=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature is not valid base64") from None
        if len(sig) != 64:
            raise SignatureError(f"signature is {len(sig)} bytes, expected 64")
        self.verify(sig, message)


def load_public_hex(text: str) -> PublicKey:
    """Parse a public key from 64 hex characters.

    Raises:
        KeyFileError: when ``text`` is not 64 hex characters.
    """
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyFileError(f"public key is not hex: {text[:20]!r}") from None
    return PublicKey(raw)


class DeviceKey:
    """A bus's Ed25519 signing key."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> DeviceKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKey:
        """A key from a 32-byte seed (deterministic simulations and tests)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_pem(cls, data: bytes) -> DeviceKey:
        """Load a PEM (PKCS#8) Ed25519 private key.

        Raises:
            KeyFileError: when the data is not an unencrypted PKCS#8 Ed25519 key.
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"not a PEM PKCS#8 private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"expected an Ed25519 key, got {type(key).__name__}")
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceKey:
        """Load a PEM key file.

        Raises:
            KeyFileError: when the file is missing or not an Ed25519 PKCS#8 PEM.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read device key {path}: {exc.strerror}") from None
        return cls.from_pem(data)

    def seed(self) -> bytes:
        """The 32-byte private seed (for key conversion, e.g. to X25519; keep it secret)."""
        return self._key.private_bytes(
            encoding=serialization.Encoding.Raw,
            format=serialization.PrivateFormat.Raw,
            encryption_algorithm=serialization.NoEncryption(),
        )

    def to_pem(self) -> bytes:
        """PEM (PKCS#8, unencrypted) bytes of this key."""
        return self._key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PEM key with mode 0600 (refuses to overwrite).

        Raises:
            KeyFileError: when the file exists or cannot be written.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message``."""
        return self._key.sign(message)

    def sign_b64(self, message: bytes) -> str:
        """The base64 signature of ``message``."""
        return base64.b64encode(self._key.sign(message)).decode("ascii")
