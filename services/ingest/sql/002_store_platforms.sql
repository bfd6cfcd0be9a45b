-- What the other platforms need. Secrets stay in `secrets` for every platform (two for rotation):
-- the HMAC key for Salla (Signature), Shopify, WooCommerce and Standard Webhooks, the token for
-- Salla (Token), and `username:password` for Zid's basic auth.
ALTER TABLE stores
    ADD COLUMN salla_strategy text NOT NULL DEFAULT 'signature'
        CHECK (salla_strategy IN ('signature', 'token')),
    -- message templates by name for the notifier, e.g. {"code_ar": "..."}; not secret
    ADD COLUMN templates jsonb NOT NULL DEFAULT '{}'::jsonb;
