-- Channels and providers: a part may go out by WhatsApp, SMS or email, and each provider call
-- is an attempt recorded before ('sending') and after it, so a crash leaves a trace to resolve.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'accepted', 'delivered', 'failed', 'revoked'));
-- The allocation as received (codes sealed, never plain): what a resume or a resend needs.
ALTER TABLE deliveries ADD COLUMN event jsonb;
ALTER TABLE deliveries ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX deliveries_unfinished ON deliveries (created_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX deliveries_provider_message ON deliveries (provider_message_id);

CREATE TABLE attempts (
    key                 text PRIMARY KEY,  -- our idempotency key (Unifonic CorrelationID)
    allocation_event_id text NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    channel             text NOT NULL,
    provider            text NOT NULL,
    recipient           text NOT NULL,
    purpose             text NOT NULL DEFAULT 'delivery' CHECK (purpose IN ('delivery', 'resend')),
    status              text NOT NULL
        CHECK (status IN ('sending', 'accepted', 'failed', 'unknown', 'delivered', 'undelivered')),
    provider_message_id text,
    error               text,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE INDEX attempts_delivery ON attempts (allocation_event_id);
CREATE INDEX attempts_provider_message ON attempts (provider, provider_message_id);

-- code.revoked: remembered even when it arrives before the allocation it revokes.
CREATE TABLE revocations (
    order_key  text NOT NULL,
    part       int NOT NULL,  -- 0: every part of the order
    reason     text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_key, part)
);
