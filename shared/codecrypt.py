"""Field encryption for codes: AES-256-GCM with a key id, and a keyed fingerprint for uniqueness;
the same keys seal the gateway's store secrets (`SecretSealer`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from shared.failures import Failure
from shared.settings import VaultKeySettings

NONCE_BYTES = 12


class VaultKeyError(Failure, ValueError):
    """The key configuration is missing or malformed."""

    code = "vault_key"


class CodeDecryptError(Failure, ValueError):
    """A ciphertext does not decrypt with the key it names (tampered, or unknown key id)."""

    code = "undecryptable"


@dataclass(frozen=True)
class SealedCode:
    """A code encrypted at rest or in transit: the key id and nonce||ciphertext||tag."""

    key_id: str
    blob: bytes

    def to_text(self) -> str:
        return f"{self.key_id}:{base64.b64encode(self.blob).decode()}"

    @classmethod
    def from_text(cls, text: str) -> SealedCode:
        key_id, _, b64 = text.partition(":")
        if not key_id or not b64:
            raise CodeDecryptError("sealed code must be '<key id>:<base64>'")
        return cls(key_id, base64.b64decode(b64, validate=True))


def normalise_code(code: str) -> str:
    """The form a code is fingerprinted in: the same code typed twice must collide."""
    return "".join(code.split()).upper()


class CodeCipher:
    """Seals and opens codes; `associated` binds a ciphertext to its sku so it cannot be moved."""

    def __init__(self, keys: dict[str, bytes], active_key_id: str, fingerprint_key: bytes):
        if active_key_id not in keys:
            raise VaultKeyError("the active key id has no key")
        for kid, key in keys.items():
            if len(key) != 32:
                raise VaultKeyError(f"key {kid!r} must be 32 bytes (AES-256)")
        if len(fingerprint_key) < 32:
            raise VaultKeyError("the fingerprint key must be at least 32 bytes")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = active_key_id
        self._fingerprint_key = fingerprint_key

    @classmethod
    def from_settings(cls, settings: VaultKeySettings) -> CodeCipher:
        keys, active = parse_vault_keys(settings.vault_keys)
        fp = settings.vault_fingerprint_key.get_secret_value().strip()
        if not fp:
            raise VaultKeyError("TASLEEM_VAULT_FINGERPRINT_KEY is not set")
        return cls(keys, active, base64.b64decode(fp))

    @property
    def active_key_id(self) -> str:
        return self._active

    def seal(self, code: str, associated: str) -> SealedCode:
        nonce = os.urandom(NONCE_BYTES)
        blob = self._aead[self._active].encrypt(nonce, code.encode(), associated.encode())
        return SealedCode(self._active, nonce + blob)

    def open(self, sealed: SealedCode, associated: str) -> str:
        return _open(self._aead, sealed, associated)

    def fingerprint(self, code: str) -> bytes:
        """Keyed hash of the normalised code: unique across every sku and store."""
        return hmac.new(
            self._fingerprint_key, normalise_code(code).encode(), hashlib.sha256
        ).digest()


def parse_vault_keys(vault_keys: SecretStr) -> tuple[dict[str, bytes], str]:
    """TASLEEM_VAULT_KEYS as keys by id, and the id of the first one (the one that encrypts)."""
    raw = vault_keys.get_secret_value().strip()
    if not raw:
        raise VaultKeyError("TASLEEM_VAULT_KEYS is not set")
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for entry in raw.split(","):
        kid, _, b64 = entry.strip().partition(":")
        if not kid or not b64:
            raise VaultKeyError("TASLEEM_VAULT_KEYS entries must be '<key id>:<base64 key>'")
        keys[kid] = base64.b64decode(b64)
        order.append(kid)
    return keys, order[0]


class SecretSealer:
    """Seals secrets that are not codes (a store's webhook secrets and platform credentials)
    under the vault keys, by key id like codes, so the same rotation applies.

    Each key id's AES-256-GCM key is derived from its vault key for this use alone (HKDF), so a
    sealed code never opens as a secret nor a secret as a code whatever their associated data
    (a sku may be any text, `store-secret:x` included); `associated` binds a ciphertext to the
    row it was sealed for."""

    INFO = b"tasleem: secrets at rest, v1"

    def __init__(self, keys: dict[str, bytes], active_key_id: str):
        if active_key_id not in keys:
            raise VaultKeyError("the active key id has no key")
        for kid, key in keys.items():
            if len(key) != 32:
                raise VaultKeyError(f"key {kid!r} must be 32 bytes (AES-256)")
        self._aead = {kid: AESGCM(self._derive(key)) for kid, key in keys.items()}
        self._active = active_key_id

    @classmethod
    def from_keys(cls, vault_keys: SecretStr) -> SecretSealer:
        return cls(*parse_vault_keys(vault_keys))

    @classmethod
    def _derive(cls, key: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=cls.INFO).derive(key)

    @property
    def active_key_id(self) -> str:
        return self._active

    def seal(self, secret: str, associated: str) -> str:
        """`<key id>:<base64 nonce||ciphertext||tag>`."""
        nonce = os.urandom(NONCE_BYTES)
        blob = self._aead[self._active].encrypt(nonce, secret.encode(), associated.encode())
        return SealedCode(self._active, nonce + blob).to_text()

    def open(self, sealed: str, associated: str) -> str:
        """The secret; CodeDecryptError when it was sealed for another row or key, or altered."""
        try:
            parsed = SealedCode.from_text(sealed)
        except ValueError:  # binascii.Error included
            raise CodeDecryptError("not a sealed secret") from None
        return _open(self._aead, parsed, associated)

    def is_current(self, sealed: str) -> bool:
        """Sealed under the key that encrypts now (else it is sealed again at start-up)."""
        return sealed.startswith(self._active + ":")


def _open(aeads: Mapping[str, AESGCM], sealed: SealedCode, associated: str) -> str:
    """Decrypt a sealed value with the key it names: codes and store secrets alike."""
    aead = aeads.get(sealed.key_id)
    if aead is None:
        raise CodeDecryptError(f"unknown key id {sealed.key_id!r}")
    try:
        plain = aead.decrypt(
            sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:], associated.encode()
        )
    except Exception as exc:  # InvalidTag carries no message worth keeping
        raise CodeDecryptError("ciphertext does not verify") from exc
    return plain.decode()


def generate_key_settings(key_id: str = "k1") -> dict[str, str]:
    """Fresh keys as environment variables, for a new embedded stack or a test run."""
    return {
        "TASLEEM_VAULT_KEYS": f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}",
        "TASLEEM_VAULT_FINGERPRINT_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
