//! Limits: which rules govern a request ([`rules`]: one rule per counter, the most specific
//! wins), their cache ([`resolver`]), and the admission control that enforces them
//! ([`limiter`]: GCRA rates, concurrency, monthly quotas and budgets, in Redis or in process).

mod limiter;
mod resolver;
mod rules;

pub use limiter::{Admission, Decision, Demand, LimitKind, Limiter, Permit, RedisEndpoint};
pub use resolver::LimitResolver;
pub use rules::RequestLimits;
