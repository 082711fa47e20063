//! What the gateway reads of an Open Inference Protocol v2 request before forwarding it: the
//! rows it declares ([`declared_rows`]), so that admission can reserve them from quotas and
//! budgets. The backend validates the request in full; this reads only the first input's
//! shape, from a bounded prefix of the JSON (ARCHITECTURE.md, "Declared rows").

mod rows;

pub use rows::{declared_rows, Scan};
