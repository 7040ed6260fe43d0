-- Every tenant token stops working; the admin token (GITO_ADMIN_TOKEN) is unaffected.
DROP TABLE api_tokens;
DROP FUNCTION api_tokens_notify();
