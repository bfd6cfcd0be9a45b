-- What a merchant needs to know about stock: cost and batch per code, an optional format rule
-- per sku, which allocated codes reached the buyer, and which orders were cancelled.
ALTER TABLE codes
    ADD COLUMN cost  numeric(12, 2),
    ADD COLUMN batch text NOT NULL DEFAULT '';

-- Expiring-soon reports look at available codes by expiry.
CREATE INDEX codes_expiring ON codes (expires_at) WHERE status = 'available' AND expires_at IS NOT NULL;

CREATE TABLE sku_rules (
    sku          text PRIMARY KEY,
    code_pattern text NOT NULL            -- a regular expression every imported code must match
);

ALTER TABLE units
    ADD COLUMN delivered_at timestamptz,  -- from message.sent: the code reached the buyer
    ADD COLUMN revoked_at   timestamptz;  -- the order was cancelled: the code is quarantined

-- A cancellation can arrive before the paid order it cancels (different topics): it is kept,
-- and the paid order is then never allocated.
CREATE TABLE cancellations (
    order_key    text PRIMARY KEY,
    reason       text NOT NULL,
    cancelled_at timestamptz NOT NULL
);
