-- The code vault. Every code is money: the database itself enforces that none is given twice.
CREATE TABLE codes (
    code_id      bigserial PRIMARY KEY,
    sku          text NOT NULL,
    -- HMAC of the normalised code: the same code can never be stored twice, in any sku or store
    fingerprint  bytea NOT NULL UNIQUE,
    sealed       text NOT NULL,            -- '<key id>:<base64 nonce||ciphertext||tag>', bound to sku
    status       text NOT NULL DEFAULT 'available'
                 CHECK (status IN ('available', 'allocated', 'revoked')),
    expires_at   timestamptz,
    source       text NOT NULL DEFAULT '',
    added_at     timestamptz NOT NULL DEFAULT now()
);
-- Only available codes are indexed for claiming, so a vault that is 90% sold claims as fast
-- as an empty one: the scan never walks past sold codes.
CREATE INDEX codes_claimable ON codes (sku, expires_at ASC NULLS LAST, code_id)
    WHERE status = 'available';

-- Cumulative codes ever received per sku: lets the restocker see its purchase has landed.
CREATE TABLE sku_totals (
    sku       text PRIMARY KEY,
    received  bigint NOT NULL DEFAULT 0
);

-- Every event applied, recorded in the same transaction as its effect: a redelivery is a no-op.
CREATE TABLE processed_events (
    event_id     text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_key    text PRIMARY KEY,
    store_id     text NOT NULL,
    store_name   text NOT NULL DEFAULT '',
    order_id     text NOT NULL,
    customer     jsonb NOT NULL,
    lines        jsonb NOT NULL,
    paid_at      timestamptz NOT NULL,
    parts        int NOT NULL DEFAULT 0,    -- code.allocated events sent for this order so far
    cancelled_at timestamptz
);

-- One row per unit of an order line; a unit gets at most one code and a code at most one unit.
CREATE TABLE units (
    order_key  text NOT NULL REFERENCES orders,
    line_no    int NOT NULL,
    unit_no    int NOT NULL,
    sku        text NOT NULL,
    code_id    bigint UNIQUE REFERENCES codes,
    part       int,                         -- the code.allocated part that carried its code
    seq        bigserial NOT NULL,          -- arrival order: backorders are filled first in, first out
    PRIMARY KEY (order_key, line_no, unit_no)
);
-- Units still waiting for a code (backorders), in arrival order per sku.
CREATE INDEX units_waiting ON units (sku, seq) WHERE code_id IS NULL;

-- Events written in the allocation transaction and relayed to Kafka after it commits.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        bytea NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
