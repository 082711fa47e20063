-- A plan's priority level in the backends' fair batchers (1 to 16, the weight of its tenants'
-- fairness keys in deficit round robin over rows; ARCHITECTURE.md, "Tenant-fair batching").
-- The gateway sends it as x-maas-priority. Default 1: every plan the same.
ALTER TABLE plans
    ADD COLUMN priority SMALLINT NOT NULL DEFAULT 1 CHECK (priority BETWEEN 1 AND 16);
