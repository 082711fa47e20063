//! The gateway's tables in PostgreSQL and every statement on them, one place per statement:
//! typed rows in, typed rows out. No other module writes SQL for these tables (usage, plans
//! and prices are the billing crate's).

mod keys;
mod rules;
mod sessions;
mod tenant_admins;
mod tenants;

pub use keys::{
    insert_key, key_by_hash, key_tenant, lock_key, revoke_key, tenant_keys, touch_keys, ApiKey,
    KeyRecord, NewKeyRow,
};
pub use rules::{
    copy_key_rules, owner_rules, owner_tenant, replace_owner_rules, request_rules,
    tenant_key_rules, Level, LimitRule, RuleOwner, Specificity,
};
pub use sessions::{delete_old_sessions, insert_session, live_session, revoke_session};
pub use tenant_admins::{
    insert_tenant_admin, live_tenant_admin, revoke_tenant_admin, tenant_admins_of, TenantAdmin,
};
pub use tenants::{
    ensure_tenant, insert_tenant, list_tenants, set_tenant_status, tenant_by_id, tenant_by_name,
    tenant_name, tenant_named, tenant_row, Tenant, TenantRecord, TenantStatus, DEFAULT_PLAN,
};
