"""Store secrets sealed at rest (issue 16): bound to their store, apart from codes, rotatable;
and what a store change accepts and shows of a Zid store's orders API credential."""

from __future__ import annotations

import base64
import os

import pytest
from aiohttp import web
from pydantic import SecretStr

from services.ingest import store_changes
from services.ingest.main import lifespan
from services.ingest.settings import IngestSettings
from services.ingest.stores import Store
from shared import runtime
from shared.codecrypt import (
    CodeCipher,
    CodeDecryptError,
    SealedCode,
    SecretSealer,
    VaultKeyError,
)

CREDENTIAL = "eyJhbGciOi.auth-token:eyJ0eXAiOi.manager-token"


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_a_sealed_secret_opens_only_for_the_store_it_was_sealed_for():
    sealer = SecretSealer.from_keys(SecretStr(f"k1:{_key()}"))
    sealed = sealer.seal("tasleem:pw", "store-secret:zid-cards")
    assert "tasleem:pw" not in sealed and sealed.startswith("k1:")
    assert sealer.open(sealed, "store-secret:zid-cards") == "tasleem:pw"
    with pytest.raises(CodeDecryptError):
        sealer.open(sealed, "store-secret:other-store")  # copied to another store's row
    with pytest.raises(CodeDecryptError):
        sealer.open(sealed, "store-api-credential:zid-cards")  # passed off as another secret
    blob = bytearray(SealedCode.from_text(sealed).blob)
    blob[-1] ^= 1
    with pytest.raises(CodeDecryptError):
        sealer.open(SealedCode("k1", bytes(blob)).to_text(), "store-secret:zid-cards")
    for junk in ("", "tasleem:pw", "k1:not base64!"):  # a plain or mangled value never opens
        with pytest.raises(CodeDecryptError):
            sealer.open(junk, "store-secret:zid-cards")


def test_codes_and_store_secrets_never_open_as_each_other_whatever_the_associated_data():
    """A sku may be any text, `store-secret:x` included: only separate keys keep the two apart."""
    keys = f"k1:{_key()}"
    sealer = SecretSealer.from_keys(SecretStr(keys))
    cipher = CodeCipher(
        {"k1": base64.b64decode(keys.partition(":")[2])}, "k1", fingerprint_key=os.urandom(32)
    )
    purpose = "store-secret:zid-cards"
    code = cipher.seal("tasleem:pw", purpose)
    with pytest.raises(CodeDecryptError):
        sealer.open(code.to_text(), purpose)
    secret = SealedCode.from_text(sealer.seal("tasleem:pw", purpose))
    with pytest.raises(CodeDecryptError):
        cipher.open(secret, purpose)


def test_rotation_a_new_key_first_still_opens_what_the_old_one_sealed():
    old, new = _key(), _key()
    before = SecretSealer.from_keys(SecretStr(f"k1:{old}"))
    sealed = before.seal("whsec_x", "store-secret:s1")
    rotated = SecretSealer.from_keys(SecretStr(f"k2:{new},k1:{old}"))
    assert rotated.open(sealed, "store-secret:s1") == "whsec_x"
    assert not rotated.is_current(sealed) and before.is_current(sealed)
    resealed = rotated.seal("whsec_x", "store-secret:s1")
    assert rotated.is_current(resealed) and resealed.startswith("k2:")
    with pytest.raises(CodeDecryptError, match="unknown key id"):
        before.open(resealed, "store-secret:s1")
    with pytest.raises(VaultKeyError):
        SecretSealer.from_keys(SecretStr(""))
    with pytest.raises(VaultKeyError):
        SecretSealer.from_keys(SecretStr(f"k1:{base64.b64encode(b'short').decode()}"))


def test_a_zid_store_needs_its_orders_api_credential_and_others_take_none():
    zid = store_changes.StoreChange(platform="zid", name="Z", secrets=["ops:pw"])
    with pytest.raises(store_changes.InvalidChange, match="orders API credential"):
        store_changes.apply("zid-1", None, zid)
    for bad in ("no-colon", ":manager", "auth:", "auth token:manager", "auth:\u202emanager"):
        with pytest.raises(store_changes.InvalidChange):
            store_changes.apply("zid-1", None, zid.model_copy(update={"api_credential": bad}))
    store = store_changes.apply(
        "zid-1", None, zid.model_copy(update={"api_credential": CREDENTIAL})
    )
    assert store.api_credential == CREDENTIAL
    renamed = store_changes.apply("zid-1", store, store_changes.StoreChange(name="Zed"))
    assert renamed.api_credential == CREDENTIAL  # kept unless sent
    rotated = store_changes.rotate(renamed, "ops:new")
    assert rotated.api_credential == CREDENTIAL
    shopify = store_changes.StoreChange(
        platform="shopify", name="S", secrets=["k"], api_credential=CREDENTIAL
    )
    with pytest.raises(store_changes.InvalidChange, match="only zid"):
        store_changes.apply("shop-1", None, shopify)


def test_what_operators_see_of_a_store_holds_no_secret():
    store = Store("zid-1", "zid", "Z", ("ops:pw", "ops:old"), api_credential=CREDENTIAL)
    shown = store_changes.shown(store)
    assert shown["api_credential"] == store_changes.fingerprint(CREDENTIAL)
    for text in (str(shown), repr(store), store_changes.config_event(store).model_dump_json()):
        for secret in (CREDENTIAL, *CREDENTIAL.split(":"), "ops:pw", "ops:old"):
            assert secret not in text
    assert store_changes.shown(Store("s", "standard", "S", ("whsec_a",)))["api_credential"] is None


async def test_the_gateway_does_not_start_without_the_vault_keys():
    """Sealed secrets cannot be read (nor new ones sealed) without them: fail before serving."""
    settings = IngestSettings(database_url="postgresql://nobody@127.0.0.1:1/none", vault_keys="")
    rt = runtime.Runtime("ingest", settings, web.Application())
    with pytest.raises(VaultKeyError, match="TASLEEM_VAULT_KEYS"):
        async with lifespan(rt):
            pass
