//! The gateway's tables in PostgreSQL and every statement on them, one place per statement:
//! typed rows in, typed rows out. No other module writes SQL for these tables (usage, plans
//! and prices are the billing crate's).

mod rules;

pub use rules::{
    owner_rules, owner_tenant, replace_owner_rules, request_rules, Level, LimitRule, RuleOwner,
    Specificity,
};
