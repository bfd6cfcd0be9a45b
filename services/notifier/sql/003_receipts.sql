-- Receipts that matched no accepted attempt when they arrived: one that overtook our record of
-- the acceptance (applied again by the sweep), or the receipt of an attempt a crash left
-- 'sending', which the resume waits for instead of sending again. Applied ones are deleted.
CREATE TABLE receipts (
    event_id            text PRIMARY KEY,
    provider            text NOT NULL,
    provider_message_id text NOT NULL,
    attempt_key         text,
    status              text NOT NULL CHECK (status IN ('accepted', 'delivered', 'failed')),
    error               text NOT NULL DEFAULT '',
    received_at         timestamptz NOT NULL
);
CREATE INDEX receipts_attempt ON receipts (attempt_key) WHERE attempt_key IS NOT NULL;
CREATE INDEX receipts_message ON receipts (provider, provider_message_id);
CREATE INDEX receipts_received ON receipts (received_at);
CREATE INDEX attempts_sending ON attempts (allocation_event_id) WHERE status = 'sending';
