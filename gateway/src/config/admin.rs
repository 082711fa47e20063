//! `[admin]`: the admin API's listener and operator token.

use serde::{Deserialize, Serialize};

/// `[admin]`: the operator API (`admin`), axum on its own listener.
///
/// `Debug` prints the operator token as `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Address the admin listener binds, `host:port`. Default `127.0.0.1:8081`.
    pub listen: String,
    /// Bearer token operators send (`Authorization: Bearer <token>`). Unset or empty: the admin
    /// API is disabled (logged at start). Prefer `MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN` to the file.
    pub operator_token: Option<String>,
    /// Connections of the admin API's own PostgreSQL pool. Default 4.
    pub db_max_connections: u32,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_| "***"),
            )
            .field("db_max_connections", &self.db_max_connections)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8081".into(),
            operator_token: None,
            db_max_connections: 4,
        }
    }
}

impl AdminConfig {
    /// The operator token when the admin API is enabled (set and not empty).
    pub fn token(&self) -> Option<&str> {
        self.operator_token.as_deref().filter(|t| !t.is_empty())
    }
}
