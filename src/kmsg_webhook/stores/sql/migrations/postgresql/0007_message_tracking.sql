-- 0007 message tracking: delivery-status tracking of sent messages (PostgreSQL).
--
-- One row per message the messaging module sent: the reconciler claims due checks under a
-- lease, polls the vendor and records the status; fallback_status 'attempting' marks an
-- ALIMTALK -> SMS fallback in flight. With field crypto on, recipient, sender, custom_fields
-- and failover (which holds the fallback text) are sealed envelopes and recipient_hash is the
-- keyed lookup hash. Timestamps are timestamptz.
-- One tracking table per database (or Postgres schema), shared by every table pair in it, so
-- it may exist already.

CREATE TABLE IF NOT EXISTS kmsg_webhook_message_tracking (
    message_id              text NOT NULL PRIMARY KEY,
    provider_id             text NOT NULL,
    provider_message_id     text,
    type                    text NOT NULL,
    recipient               text NOT NULL,
    recipient_hash          text,
    sender                  text,
    status                  text NOT NULL
        CHECK (status IN ('PENDING', 'SENT', 'DELIVERED', 'FAILED', 'CANCELLED', 'UNKNOWN')),
    requested_at            timestamptz NOT NULL,
    status_updated_at       timestamptz NOT NULL,
    next_check_at           timestamptz NOT NULL,
    scheduled_at            timestamptz,
    attempt_count           integer NOT NULL DEFAULT 0,
    last_checked_at         timestamptz,
    sent_at                 timestamptz,
    delivered_at            timestamptz,
    failed_at               timestamptz,
    provider_status_code    text,
    provider_status_message text,
    last_error_code         text,
    last_error_message      text,
    template_id             text,
    correlation_id          text,
    custom_fields           text,
    failover                text,
    fallback_status         text,
    lease_owner             text,
    lease_expires_at        timestamptz
);

-- The reconciler's claim: checks still to make, earliest due first.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_due
    ON kmsg_webhook_message_tracking (next_check_at, message_id)
    WHERE status IN ('PENDING', 'SENT');
-- Fallbacks whose sender may have died mid-send (claimed again once the lease expires).
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_fallback
    ON kmsg_webhook_message_tracking (message_id) WHERE fallback_status = 'attempting';
-- Listings and retention by age; lookups by the vendor's id and by recipient hash.
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_requested_at
    ON kmsg_webhook_message_tracking (requested_at);
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_provider_message
    ON kmsg_webhook_message_tracking (provider_id, provider_message_id);
CREATE INDEX IF NOT EXISTS idx_kmsg_webhook_message_tracking_recipient_hash
    ON kmsg_webhook_message_tracking (recipient_hash) WHERE recipient_hash IS NOT NULL;
