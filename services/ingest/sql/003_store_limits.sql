-- Issue 16: what keeps one store from reaching another's orders or stock, and bounds one order.
ALTER TABLE stores
    -- the merchant account the store belongs to; several stores of one merchant may share it
    ADD COLUMN account text,
    ADD COLUMN max_lines int NOT NULL DEFAULT 50 CHECK (max_lines BETWEEN 1 AND 1000),
    ADD COLUMN max_units int NOT NULL DEFAULT 100 CHECK (max_units BETWEEN 1 AND 100000),
    -- the platform's id for the store (Salla's `merchant`), checked against each webhook
    ADD COLUMN platform_store_id text NOT NULL DEFAULT ''
        CHECK (platform_store_id ~ '^[A-Za-z0-9._-]{0,64}$');
UPDATE stores SET account = store_id WHERE account IS NULL;
ALTER TABLE stores
    ALTER COLUMN account SET NOT NULL,
    ADD CONSTRAINT stores_account_syntax CHECK (account ~ '^[a-z0-9][a-z0-9-]{0,62}$') NOT VALID;
-- Order keys are `platform:store_id:order_id`: a `:` in a store id let store `secx` cancel store
-- `secx:a`'s orders. NOT VALID keeps a gateway with such a legacy row starting (the gateway
-- refuses that store's webhooks at the edge); every new or changed row is checked.
ALTER TABLE stores
    ADD CONSTRAINT stores_store_id_syntax CHECK (store_id ~ '^[a-z0-9][a-z0-9-]{0,62}$') NOT VALID;
-- From here on a non-empty sku_map is the store's catalogue: a webhook line whose sku is neither
-- a key nor a value of it is refused (422 unknown_sku) rather than passed through.
