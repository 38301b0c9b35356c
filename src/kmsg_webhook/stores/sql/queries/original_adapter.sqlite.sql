-- Bringing tables of the original TypeScript D1 adapter to the current form (D1 only; the SQLite
-- backend refuses such tables). The D1 schema module runs these in one atomic batch, after the
-- column changes (renames, drops, added columns), which it derives from the SQLite migrations.
-- kmsg_webhook_* identifiers are replaced by the configured (validated, quoted) names.

-- name: endpoints_headers
UPDATE kmsg_webhook_endpoints SET headers_json = '{}' WHERE headers_json IS NULL;

-- name: endpoints_status
-- A status the original had and this library does not know reads as inactive.
UPDATE kmsg_webhook_endpoints
SET status = 'inactive'
WHERE status NOT IN ('active', 'inactive', 'error', 'suspended', 'pending_verification');

-- name: endpoints_retry_config
-- The original wrote camelCase JSON; the stored form has snake_case keys.
UPDATE kmsg_webhook_endpoints
SET retry_config_json = json_object(
        'max_retries', json_extract(retry_config_json, '$.maxRetries'),
        'retry_delay_ms', json_extract(retry_config_json, '$.retryDelayMs'),
        'backoff_multiplier', json_extract(retry_config_json, '$.backoffMultiplier'))
WHERE json_valid(retry_config_json);

-- name: endpoints_filters
UPDATE kmsg_webhook_endpoints
SET filters_json = json_object(
        'provider_id', json(coalesce(json_extract(filters_json, '$.providerId'), '[]')),
        'channel_id', json(coalesce(json_extract(filters_json, '$.channelId'), '[]')),
        'template_id', json(coalesce(json_extract(filters_json, '$.templateId'), '[]')))
WHERE json_valid(filters_json);

-- name: deliveries_attempts
-- The original wrote each row once, finished, with its attempts in camelCase JSON.
UPDATE kmsg_webhook_deliveries
SET attempts_json = (
        SELECT json_group_array(json_object(
            'attempt_number', json_extract(value, '$.attemptNumber'),
            'started_at', json_extract(value, '$.timestamp'),
            'latency_ms', coalesce(json_extract(value, '$.latencyMs'), 0),
            'http_status', json_extract(value, '$.httpStatus'),
            'response_body', json_extract(value, '$.responseBody'),
            'error', json_extract(value, '$.error')))
        FROM json_each(attempts_json))
WHERE json_valid(attempts_json);

-- name: deliveries_attempt_count
UPDATE kmsg_webhook_deliveries
SET attempt_count = json_array_length(attempts_json),
    last_latency_ms = json_extract(attempts_json, '$[#-1].latency_ms')
WHERE json_valid(attempts_json);

-- name: deliveries_next_attempt
-- It kept next_retry_at as history; here the column means "next due".
UPDATE kmsg_webhook_deliveries SET next_attempt_at = NULL WHERE status <> 'pending';
