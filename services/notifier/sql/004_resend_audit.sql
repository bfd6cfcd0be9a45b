-- Every operator resend, who asked and to whom, written before anything is sent: a resend to
-- a new phone or address is the one way codes leave for someone the store never named, so it
-- must leave a trace. Never the codes. Also what the per-order and per-caller limits count.
CREATE TABLE resends (
    id                bigserial PRIMARY KEY,
    order_key         text NOT NULL,
    caller            text NOT NULL,  -- the admin token's caller name
    requested_at      timestamptz NOT NULL DEFAULT now(),
    original_phone    text,           -- the buyer's, as the order gave them
    original_email    text,
    phone             text,           -- where this resend went
    email             text,
    recipient_changed boolean NOT NULL,
    reason            text,
    outcome           text NOT NULL DEFAULT 'started'
        CHECK (outcome IN ('started', 'sent', 'partial', 'failed', 'skipped')),
    parts             jsonb NOT NULL DEFAULT '[]',  -- per part: status, channel, provider, id
    finished_at       timestamptz
);
CREATE INDEX resends_order ON resends (order_key, requested_at);
CREATE INDEX resends_caller ON resends (caller, requested_at);
