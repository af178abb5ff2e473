-- Up Migration

-- Enforcement of a role per tenant (issue 15 §5): one tenant's failures throttle or suspend the role
-- for that tenant only. role_heads.suspended_at stays the global suspension, an operator's to set.
CREATE TABLE role_tenant_enforcement (
  role              text NOT NULL REFERENCES role_heads (name) ON DELETE CASCADE,
  tenant            text NOT NULL,
  suspended_at      timestamptz,
  suspended_reason  text,
  throttle_cap      int CHECK (throttle_cap IS NULL OR throttle_cap >= 1),
  throttled_at      timestamptz,
  throttle_reason   text,
  updated_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (role, tenant)
);

-- Role caches drop their routing candidates when a tenant's enforcement changes.
CREATE FUNCTION notify_role_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('mare_roles', NEW.role);
  RETURN NULL;
END $$;
CREATE TRIGGER role_tenant_enforcement_notify AFTER INSERT OR UPDATE ON role_tenant_enforcement
  FOR EACH ROW EXECUTE FUNCTION notify_role_tenant_change();

-- Throttles were set by the one supervisor per role; it is now the supervisor of the default tenant.
INSERT INTO role_tenant_enforcement (role, tenant, throttle_cap, throttled_at, throttle_reason)
  SELECT name, 'default', throttle_cap, throttled_at, throttle_reason FROM role_heads WHERE throttle_cap IS NOT NULL;
ALTER TABLE role_heads DROP COLUMN throttle_cap, DROP COLUMN throttled_at, DROP COLUMN throttle_reason;

-- Which tenant an embodiment ran for, and which tenant an enforcement applies to (NULL: every tenant).
ALTER TABLE embodiments ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE enforcement_actions ADD COLUMN tenant text;

-- Down Migration
ALTER TABLE enforcement_actions DROP COLUMN tenant;
ALTER TABLE embodiments DROP COLUMN tenant;
ALTER TABLE role_heads
  ADD COLUMN throttle_cap     int CHECK (throttle_cap IS NULL OR throttle_cap >= 1),
  ADD COLUMN throttled_at     timestamptz,
  ADD COLUMN throttle_reason  text;
DROP TABLE role_tenant_enforcement;
DROP FUNCTION notify_role_tenant_change();
