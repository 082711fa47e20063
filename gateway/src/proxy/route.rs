//! Which Open Inference Protocol v2 routes the gateway serves, and what a path names.
//!
//! Routes (KServe OIP v2 REST, "HTTP/REST" section):
//! - `GET /v2/health/live`, `GET /v2/health/ready`: forwarded without authentication;
//! - `/v2/models/{model}[/versions/{version}][/...]`: model metadata, readiness and
//!   `POST .../infer`; authenticated, and the model is checked against the key's allow-list.
//! - `GET /v2` (server metadata) and `POST /v2/repository/index` (model repository
//!   extension): authenticated, answered by the gateway itself from its pools, the index
//!   holding only the models the key may call.
//!
//! Everything else is a 404 from the gateway itself.

use maas_billing::CallKind;

use crate::error::GatewayError;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/health/live` or `/v2/health/ready`: no authentication.
    Health,
    /// `/v2`: server metadata, answered by the gateway.
    ServerMetadata,
    /// `/v2/repository/index`: the models the caller may call, answered by the gateway.
    RepositoryIndex,
    /// `/v2/models/{model}[/versions/{version}]...`.
    Model {
        /// Model name as written in the path.
        model: String,
        /// Model version, when the path has `/versions/{version}`.
        version: Option<String>,
    },
}

impl Route {
    /// Whether the route needs an API key.
    pub fn needs_auth(&self) -> bool {
        !matches!(self, Route::Health)
    }
}

/// Parse a request path (without query string) into a [`Route`].
///
/// Model and version names are `[A-Za-z0-9_.-]+`, not starting with `.`: no percent-encoding,
/// so the name the allow-list is checked against is the name the backend sees.
///
/// # Errors
/// [`GatewayError::NotFound`] for any other path.
pub fn parse_route(path: &str) -> Result<Route, GatewayError> {
    let not_found = || GatewayError::NotFound(truncate(path, 200));
    if path == "/v2/health/live" || path == "/v2/health/ready" {
        return Ok(Route::Health);
    }
    if path == "/v2" {
        return Ok(Route::ServerMetadata);
    }
    if path == "/v2/repository/index" {
        return Ok(Route::RepositoryIndex);
    }
    let rest = path.strip_prefix("/v2/models/").ok_or_else(not_found)?;
    let mut segments = rest.split('/');
    let model = segments
        .next()
        .filter(|m| valid_name(m))
        .ok_or_else(not_found)?;
    let mut tail: Vec<&str> = segments.collect();
    let mut version = None;
    if tail.first() == Some(&"versions") {
        let v = tail
            .get(1)
            .filter(|v| valid_name(v))
            .ok_or_else(not_found)?;
        version = Some((*v).to_string());
        tail.drain(..2);
    }
    // An empty segment anywhere but at the very end (`.../infer/` is tolerated) is malformed.
    if let Some(pos) = tail.iter().position(|s| s.is_empty()) {
        if pos + 1 != tail.len() {
            return Err(not_found());
        }
    }
    Ok(Route::Model {
        model: model.to_string(),
        version,
    })
}

/// The kind of call `path` (already parsed as `route`) is, for metering: only
/// `.../infer` is an inference (billable) call; `.../ready` is readiness; a model path with
/// nothing after its name (and version) and `/v2` are metadata; `/v2/repository/index` is the
/// index; anything else under a model (and the health routes, never metered) is `Other`.
pub fn call_kind(route: &Route, path: &str) -> CallKind {
    match route {
        Route::ServerMetadata => CallKind::Metadata,
        Route::RepositoryIndex => CallKind::Index,
        Route::Health => CallKind::Other,
        Route::Model { model, version } => {
            let mut tail = path
                .strip_prefix("/v2/models/")
                .and_then(|r| r.strip_prefix(model.as_str()))
                .unwrap_or_default();
            if let Some(v) = version {
                tail = tail
                    .strip_prefix("/versions/")
                    .and_then(|r| r.strip_prefix(v.as_str()))
                    .unwrap_or_default();
            }
            match tail.trim_end_matches('/') {
                "" => CallKind::Metadata,
                "/infer" => CallKind::Inference,
                "/ready" => CallKind::Readiness,
                _ => CallKind::Other,
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(m: &str, v: Option<&str>) -> Route {
        Route::Model {
            model: m.into(),
            version: v.map(Into::into),
        }
    }

    #[test]
    fn health_routes() {
        assert_eq!(parse_route("/v2/health/live"), Ok(Route::Health));
        assert_eq!(parse_route("/v2/health/ready"), Ok(Route::Health));
        assert!(!Route::Health.needs_auth());
        assert!(parse_route("/v2/health/other").is_err());
        assert!(parse_route("/v2/health").is_err());
    }

    #[test]
    fn model_routes() {
        assert_eq!(
            parse_route("/v2/models/mnist/infer"),
            Ok(model("mnist", None))
        );
        assert_eq!(parse_route("/v2/models/mnist"), Ok(model("mnist", None)));
        assert_eq!(
            parse_route("/v2/models/mnist/ready"),
            Ok(model("mnist", None))
        );
        assert_eq!(
            parse_route("/v2/models/dense-1.b_2/versions/3/infer"),
            Ok(model("dense-1.b_2", Some("3")))
        );
        assert_eq!(
            parse_route("/v2/models/m/versions/2"),
            Ok(model("m", Some("2")))
        );
        assert_eq!(parse_route("/v2/models/m/infer/"), Ok(model("m", None)));
        assert!(model("m", None).needs_auth());
    }

    #[test]
    fn only_infer_paths_are_inference_calls() {
        for (path, kind) in [
            ("/v2/models/m/infer", CallKind::Inference),
            ("/v2/models/m/infer/", CallKind::Inference),
            ("/v2/models/m/versions/2/infer", CallKind::Inference),
            ("/v2/models/m", CallKind::Metadata),
            ("/v2/models/m/versions/2", CallKind::Metadata),
            ("/v2/models/m/versions/2/", CallKind::Metadata),
            ("/v2/models/m/ready", CallKind::Readiness),
            ("/v2/models/m/versions/2/ready", CallKind::Readiness),
            ("/v2/models/m/generate", CallKind::Other),
            ("/v2/models/infer/ready", CallKind::Readiness),
            ("/v2/models/infer", CallKind::Metadata),
            ("/v2", CallKind::Metadata),
            ("/v2/repository/index", CallKind::Index),
            ("/v2/health/ready", CallKind::Other),
        ] {
            let route = parse_route(path).unwrap();
            assert_eq!(call_kind(&route, path), kind, "{path}");
        }
    }

    #[test]
    fn gateway_answered_routes() {
        assert_eq!(parse_route("/v2"), Ok(Route::ServerMetadata));
        assert_eq!(
            parse_route("/v2/repository/index"),
            Ok(Route::RepositoryIndex)
        );
        assert!(Route::ServerMetadata.needs_auth());
        assert!(Route::RepositoryIndex.needs_auth());
    }

    #[test]
    fn rejected_paths() {
        for p in [
            "/",
            "/v2/",
            "/v1/models/m/infer",
            "/v2/models",
            "/v2/models/",
            "/v2/models//infer",
            "/v2/models/m/versions",
            "/v2/models/m/versions//infer",
            "/v2/models/%6Dodel/infer",
            "/v2/models/../infer",
            "/v2/models/.hidden/infer",
            "/v2/models/m//infer",
            "/v2/repository/index/x",
            "/v2/repository/models/m/load",
        ] {
            let e = parse_route(p).unwrap_err();
            assert_eq!(e.status().as_u16(), 404, "{p}");
        }
    }

    #[test]
    fn long_paths_are_truncated_in_the_message() {
        let p = format!("/x/{}", "é".repeat(300));
        let e = parse_route(&p).unwrap_err();
        assert!(e.to_string().len() < 400);
    }
}
