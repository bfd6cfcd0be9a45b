-- One row per code.allocated part: written 'sending' before the provider call and
-- 'accepted' after it, so a redelivered event never produces a second message.
CREATE TABLE deliveries (
    allocation_event_id text PRIMARY KEY,
    order_key           text NOT NULL,
    part                int NOT NULL,
    status              text NOT NULL CHECK (status IN ('sending', 'accepted', 'failed')),
    channel             text,
    provider            text,
    provider_message_id text,
    recipient           text,
    attempts            int NOT NULL DEFAULT 0,
    code_count          int NOT NULL,
    reasons             text[] NOT NULL DEFAULT '{}',
    paid_at             timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    accepted_at         timestamptz
);
CREATE INDEX deliveries_order ON deliveries (order_key);
