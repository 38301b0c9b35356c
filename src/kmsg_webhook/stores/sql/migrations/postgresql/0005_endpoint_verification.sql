-- 0005 endpoint verification: an endpoint may wait for its receiver to answer a challenge
-- (status 'pending_verification'; it receives nothing until then) (PostgreSQL).

ALTER TABLE kmsg_webhook_endpoints DROP CONSTRAINT kmsg_webhook_endpoints_status_check;
ALTER TABLE kmsg_webhook_endpoints ADD CONSTRAINT kmsg_webhook_endpoints_status_check
    CHECK (status IN ('active', 'inactive', 'error', 'suspended', 'pending_verification'));
