import base64
import os

import pytest

from shared.codecrypt import CodeCipher, CodeDecryptError, SealedCode, VaultKeyError
from shared.settings import VaultKeySettings


def _cipher(keys: dict[str, bytes], active: str) -> CodeCipher:
    return CodeCipher(keys, active, b"f" * 32)


def test_sealed_code_opens_only_for_its_sku():
    cipher = _cipher({"k1": os.urandom(32)}, "k1")
    sealed = cipher.seal("ABCD-1234", "SKU-A")
    assert "ABCD" not in sealed.to_text()
    assert cipher.open(SealedCode.from_text(sealed.to_text()), "SKU-A") == "ABCD-1234"
    with pytest.raises(CodeDecryptError):
        cipher.open(sealed, "SKU-B")  # moved to another sku: refused


def test_tampered_ciphertext_is_refused():
    cipher = _cipher({"k1": os.urandom(32)}, "k1")
    sealed = cipher.seal("ABCD-1234", "SKU-A")
    flipped = bytearray(sealed.blob)
    flipped[-1] ^= 1
    with pytest.raises(CodeDecryptError):
        cipher.open(SealedCode("k1", bytes(flipped)), "SKU-A")


def test_rotation_keeps_old_codes_readable():
    old, new = os.urandom(32), os.urandom(32)
    before = _cipher({"k1": old}, "k1").seal("CODE-1", "S")
    rotated = _cipher({"k2": new, "k1": old}, "k2")
    assert rotated.open(before, "S") == "CODE-1"
    assert rotated.seal("CODE-2", "S").key_id == "k2"


def test_fingerprint_ignores_case_and_spacing_but_not_content():
    cipher = _cipher({"k1": os.urandom(32)}, "k1")
    assert cipher.fingerprint("abcd-1234") == cipher.fingerprint(" ABCD-1234 ")
    assert cipher.fingerprint("ABCD 1234") == cipher.fingerprint("ABCD1234")
    assert cipher.fingerprint("ABCD-1234") != cipher.fingerprint("ABCD-1235")


def test_settings_parse_and_missing_keys_fail_loudly():
    key = base64.b64encode(os.urandom(32)).decode()
    fp = base64.b64encode(os.urandom(32)).decode()
    cipher = CodeCipher.from_settings(
        VaultKeySettings(vault_keys=f"new:{key},old:{key}", vault_fingerprint_key=fp)
    )
    assert cipher.active_key_id == "new"
    with pytest.raises(VaultKeyError):
        CodeCipher.from_settings(VaultKeySettings(vault_keys="", vault_fingerprint_key=fp))
    with pytest.raises(VaultKeyError):
        CodeCipher.from_settings(
            VaultKeySettings(vault_keys="k1:c2hvcnQ=", vault_fingerprint_key=fp)
        )
