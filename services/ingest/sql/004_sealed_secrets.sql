-- Issue 16: webhook secrets and platform credentials are sealed at rest (AES-256-GCM under
-- TASLEEM_VAULT_KEYS, bound to their store; shared/codecrypt.py SecretSealer). SQL cannot seal
-- without the key: rows written before this stay plain (`sealed` false) until a gateway starts
-- and seals them in one transaction (services/ingest/stores.py seal_at_rest).
ALTER TABLE stores
    -- the credential of the platform's API, for platforms whose webhooks prove nothing about
    -- the order (Zid: `<Authorization token>:<X-Manager-Token>`); '' = none
    ADD COLUMN api_credential text NOT NULL DEFAULT '',
    -- secrets and api_credential hold sealed text (`<key id>:<base64>`), not the secrets
    ADD COLUMN sealed boolean NOT NULL DEFAULT false;
