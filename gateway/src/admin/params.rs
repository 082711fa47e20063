//! The query parameters of the usage routes, each checked by name before anything is read: a
//! time range (`from`, `to`), `granularity`, `group_by`, `tz`, and an export's `format`.
//!
//! The wire shapes ([`UsageParams`], [`ExportParams`]: what OpenAPI documents) become typed
//! queries ([`ReportQuery`], [`ExportQuery`]) as they are deserialized (serde's `try_from`), so
//! a handler sees only valid values and a bad one is a 400 that names it. Whether `tz` is a zone
//! PostgreSQL knows needs the database: [`check_time_zone`], in the handler.

use chrono::{DateTime, Utc};
use maas_billing::export::ExportFormat;
use maas_billing::report::{is_known_time_zone, Granularity};
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::IntoParams;

use super::error::AppError;

/// Query of `GET /admin/v1/tenants/{tenant_id}/usage`, as sent.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Start of the range, inclusive, RFC 3339 (e.g. `2026-11-01T00:00:00Z`).
    #[param(required = true)]
    pub from: Option<String>,
    /// End of the range, exclusive, RFC 3339.
    #[param(required = true)]
    pub to: Option<String>,
    /// `hour` or `day` (default `day`).
    pub granularity: Option<String>,
    /// Comma-separated subset of `model` and `key` (default: no grouping).
    pub group_by: Option<String>,
    /// IANA time zone of the bucket boundaries (default `UTC`), e.g. `Europe/Paris`.
    pub tz: Option<String>,
}

/// Query of `GET /admin/v1/tenants/{tenant_id}/usage/export`, as sent.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Start of the range, inclusive, RFC 3339 (e.g. `2026-11-01T00:00:00Z`).
    #[param(required = true)]
    pub from: Option<String>,
    /// End of the range, exclusive, RFC 3339.
    #[param(required = true)]
    pub to: Option<String>,
    /// `csv` (default), `jsonl` or `cloudevents`.
    pub format: Option<String>,
}

/// A time range `[from, to)`, `from < to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Start, inclusive (UTC).
    pub from: DateTime<Utc>,
    /// End, exclusive (UTC).
    pub to: DateTime<Utc>,
}

/// A checked usage report query.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "UsageParams")]
pub struct ReportQuery {
    /// The range.
    pub range: TimeRange,
    /// Bucket width (default day).
    pub granularity: Granularity,
    /// Whether buckets are split by model.
    pub by_model: bool,
    /// Whether buckets are split by API key.
    pub by_key: bool,
    /// A plausible time zone name (default `UTC`); [`check_time_zone`] says whether it exists.
    pub tz: String,
}

impl TryFrom<UsageParams> for ReportQuery {
    type Error = AppError;

    fn try_from(p: UsageParams) -> Result<Self, AppError> {
        let range = parse_range(p.from.as_deref(), p.to.as_deref())?;
        let granularity = parse_granularity(p.granularity.as_deref())?;
        let (by_model, by_key) = parse_group_by(p.group_by.as_deref())?;
        let tz = p.tz.unwrap_or_else(|| "UTC".into());
        if !plausible_time_zone(&tz) {
            return Err(bad_time_zone(&tz));
        }
        Ok(ReportQuery {
            range,
            granularity,
            by_model,
            by_key,
            tz,
        })
    }
}

/// A checked export query.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ExportParams")]
pub struct ExportQuery {
    /// The range.
    pub range: TimeRange,
    /// The format (default CSV).
    pub format: ExportFormat,
}

impl TryFrom<ExportParams> for ExportQuery {
    type Error = AppError;

    fn try_from(p: ExportParams) -> Result<Self, AppError> {
        let range = parse_range(p.from.as_deref(), p.to.as_deref())?;
        let format = p.format.as_deref().unwrap_or("csv").parse()?;
        Ok(ExportQuery { range, format })
    }
}

/// An RFC 3339 timestamp parameter named `name`.
fn parse_time(name: &str, raw: Option<&str>) -> Result<DateTime<Utc>, AppError> {
    let expected = "an RFC 3339 timestamp such as 2026-11-01T00:00:00Z";
    let raw = raw.ok_or_else(|| AppError::BadRequest(format!("{name}: required, {expected}")))?;
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AppError::BadRequest(format!("{name} `{raw}`: expected {expected}")))
}

/// `from` and `to` of a time range, `from < to`.
fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<TimeRange, AppError> {
    let (from, to) = (parse_time("from", from)?, parse_time("to", to)?);
    if from >= to {
        return Err(AppError::BadRequest(
            "from must be before to (the range is [from, to))".into(),
        ));
    }
    Ok(TimeRange { from, to })
}

/// The `granularity` parameter (default `day`).
fn parse_granularity(raw: Option<&str>) -> Result<Granularity, AppError> {
    Ok(raw.unwrap_or("day").parse()?)
}

/// The `group_by` parameter: a comma-separated subset of `model` and `key` (absent or empty:
/// no grouping). Returns (by model, by key).
fn parse_group_by(raw: Option<&str>) -> Result<(bool, bool), AppError> {
    let (mut by_model, mut by_key) = (false, false);
    for part in raw.unwrap_or("").split(',').map(str::trim) {
        match part {
            "" => {}
            "model" => by_model = true,
            "key" => by_key = true,
            other => {
                return Err(AppError::BadRequest(format!(
                    "group_by `{other}`: expected a comma-separated list of model and key"
                )))
            }
        }
    }
    Ok((by_model, by_key))
}

/// Longest time zone name accepted (the longest IANA name is 32 characters).
const MAX_TZ_LEN: usize = 64;

/// Whether `tz` could be an IANA time zone name (checked before it reaches the database).
fn plausible_time_zone(tz: &str) -> bool {
    !tz.is_empty()
        && tz.len() <= MAX_TZ_LEN
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
}

fn bad_time_zone(tz: &str) -> AppError {
    AppError::BadRequest(format!(
        "tz `{tz}`: expected an IANA time zone name such as UTC or Europe/Paris"
    ))
}

/// 400 naming `tz` unless PostgreSQL's time zone database knows it.
///
/// # Errors
/// [`AppError::BadRequest`]; [`AppError::Internal`] when PostgreSQL fails.
pub async fn check_time_zone(pool: &PgPool, tz: &str) -> Result<(), AppError> {
    if is_known_time_zone(pool, tz).await? {
        Ok(())
    } else {
        Err(bad_time_zone(tz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::extract::AppQuery;
    use axum::extract::{FromRequestParts, Request};
    use axum::http::StatusCode;

    async fn query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, AppError> {
        let uri = format!("/x?{query}");
        let (mut parts, ()) = Request::builder().uri(uri).body(()).unwrap().into_parts();
        AppQuery::<T>::from_request_parts(&mut parts, &())
            .await
            .map(|AppQuery(q)| q)
    }

    #[tokio::test]
    async fn typed_queries_keep_each_parameter_s_message() {
        let range = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
        let q: ReportQuery = query(&format!("{range}&granularity=hour&group_by=model"))
            .await
            .unwrap();
        assert_eq!(q.granularity, Granularity::Hour);
        assert!(q.by_model && !q.by_key);
        assert_eq!(q.tz, "UTC");
        let e = query::<ReportQuery>(&format!("{range}&tz=Europe%2FParis%27"))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("tz `Europe/Paris'`"), "{e}");
        let e = query::<ReportQuery>("to=2026-11-01T00:00:00Z")
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("from: required"), "{e}");
        let q: ExportQuery = query(range).await.unwrap();
        assert_eq!(q.format, ExportFormat::Csv);
        assert_eq!(q.range.to - q.range.from, chrono::Duration::days(30));
        let e = query::<ExportQuery>(&format!("{range}&format=xml"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().starts_with("format `xml`"), "{e}");
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let msg = |e: AppError| {
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            e.to_string()
        };
        assert!(msg(parse_time("from", None).unwrap_err()).starts_with("from: required"));
        assert!(msg(parse_time("to", Some("yesterday")).unwrap_err()).starts_with("to `yesterday`"));
        assert_eq!(
            parse_time("from", Some("2026-11-01T01:00:00+01:00")).unwrap(),
            "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let t = "2026-11-01T00:00:00Z";
        assert!(msg(parse_range(Some(t), Some(t)).unwrap_err()).contains("from must be before to"));
        assert!(msg(parse_granularity(Some("week")).unwrap_err()).starts_with("granularity `week`"));
        assert_eq!(parse_granularity(None).unwrap(), Granularity::Day);
        assert_eq!(parse_group_by(Some("key, model")).unwrap(), (true, true));
        assert_eq!(parse_group_by(Some("")).unwrap(), (false, false));
        assert_eq!(parse_group_by(None).unwrap(), (false, false));
        assert!(
            msg(parse_group_by(Some("model,region")).unwrap_err()).starts_with("group_by `region`")
        );
    }
}
