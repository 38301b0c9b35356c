-- 0003 client certificates: a certificate and key an endpoint presents over https (SQLite).
--
-- For receivers that require mutual TLS. Both PEM text, both NULL when unused; the key is
-- sealed like the signing secrets when field crypto encrypts them (docs/field-crypto.md).

ALTER TABLE kmsg_webhook_endpoints ADD COLUMN client_cert TEXT;
ALTER TABLE kmsg_webhook_endpoints ADD COLUMN client_key TEXT;
