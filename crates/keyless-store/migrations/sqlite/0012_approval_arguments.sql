-- The arguments of the call an approval is for (canonical JSON, the text
-- whose SHA-256 is `args_sha256`), so the person deciding sees the exact
-- call. NULL for approvals stored before this column existed.
ALTER TABLE gateway_approvals ADD COLUMN arguments TEXT;
