//! A tenant's API keys: the list (name, prefix, created, last used, models, own limits,
//! status), a form to create one (its secret shown once, on the answer page, never in a URL),
//! and revoke and rotate buttons: the self-service of the API ([`super::super::keys`]), as
//! forms carrying the session's CSRF token.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::super::error::AppError;
use super::super::keys::{self as api, CreatedApiKey, NewApiKey};
use super::super::state::AdminState;
use super::layout::{csrf_field, page as layout, TenantRef};
use super::limits::rule_summary;
use super::sign_in::CsrfForm;
use super::signed_in::{PageError, SignedIn};
use crate::store;

/// The create form's fields.
#[derive(Deserialize)]
pub struct CreateForm {
    csrf: String,
    name: String,
    /// Comma-separated model names; empty: every model.
    #[serde(default)]
    models: String,
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "never".into(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

async fn render(
    state: &AdminState,
    signed: &SignedIn,
    tenant_id: Uuid,
    created: Option<&CreatedApiKey>,
    error: Option<&str>,
) -> Result<Markup, PageError> {
    let name = state.tenant_name(tenant_id).await?;
    let keys = api::listed_keys(&state.pool, tenant_id).await?;
    let body = html! {
        @if let Some(c) = created {
            div.secret id="new-secret-box" {
                p { "New key " strong { (c.key.name) } " created. Copy its secret now: it is shown only this once." }
                code id="new-secret" { (c.secret) }
            }
        }
        @if let Some(e) = error { p.error id="error" { (e) } }
        form.create method="post" action={ "/dashboard/tenants/" (tenant_id) "/keys" } id="create-key" {
            (csrf_field(signed))
            label { "Name" input type="text" name="name" id="key-name" required maxlength="200"; }
            label { "Models (comma-separated; empty: every model)" input type="text" name="models" id="key-models"; }
            button type="submit" id="create" { "Create key" }
        }
        h2 { "Keys" }
        table id="keys-table" {
            thead { tr {
                th { "Name" } th { "Prefix" } th { "Created" } th { "Last used" } th { "Models" }
                th { "Own limits" } th { "Status" } th {}
            } }
            tbody {
                @for k in &keys {
                    tr data-key-id=(k.key.id) {
                        td { (k.key.name) }
                        td { code { (k.key.prefix) } }
                        td { (when(Some(k.key.created_at))) }
                        td { (when(k.key.last_used_at)) }
                        td { (k.key.allowed_models.as_ref().map_or_else(|| "every model".to_string(), |m| m.join(", "))) }
                        td { @if k.limits.is_empty() { span.muted { "tenant's" } }
                             @for r in &k.limits { div { (rule_summary(r)) } } }
                        @if k.key.revoked_at.is_some() {
                            td.revoked { "revoked " (when(k.key.revoked_at)) } td {}
                        } @else {
                            td { "live" }
                            td {
                                form.inline method="post" action={ "/dashboard/tenants/" (tenant_id) "/keys/" (k.key.id) "/rotate" } {
                                    (csrf_field(signed))
                                    button type="submit" class="secondary rotate" { "Rotate" }
                                }
                                " "
                                form.inline method="post" action={ "/dashboard/tenants/" (tenant_id) "/keys/" (k.key.id) "/revoke" } {
                                    (csrf_field(signed))
                                    button type="submit" class="danger revoke" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(
        "Keys",
        signed,
        Some(TenantRef {
            id: tenant_id,
            name: &name,
        }),
        "keys",
        body,
    ))
}

/// `GET /dashboard/tenants/{tenant_id}/keys`.
pub async fn page(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path(tenant_id): Path<Uuid>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    render(&state, &signed, tenant_id, None, None).await
}

/// `POST /dashboard/tenants/{tenant_id}/keys`: create; the answer page shows the secret once.
pub async fn create(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path(tenant_id): Path<Uuid>,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Result<Response, PageError> {
    signed.tenant(tenant_id)?;
    signed.check_form(&headers, &form.csrf)?;
    let models: Vec<String> = form
        .models
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    let body = NewApiKey {
        name: form.name.trim().to_string(),
        allowed_models: (!models.is_empty()).then_some(models),
        expires_at: None,
    };
    match api::create(&state, tenant_id, &body).await {
        Ok(created) => Ok((
            StatusCode::CREATED,
            render(&state, &signed, tenant_id, Some(&created), None).await?,
        )
            .into_response()),
        Err(AppError::BadRequest(msg)) => Ok((
            StatusCode::BAD_REQUEST,
            render(&state, &signed, tenant_id, None, Some(&msg)).await?,
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// The key of a form route, once it is tenant `tenant_id`'s (403 page otherwise).
async fn own_key(state: &AdminState, tenant_id: Uuid, key_id: Uuid) -> Result<(), PageError> {
    if store::key_tenant(&state.pool, key_id).await? != Some(tenant_id) {
        return Err(AppError::Forbidden(format!(
            "key {key_id} is not one of this tenant's ({tenant_id}) keys"
        ))
        .into());
    }
    Ok(())
}

/// `POST /dashboard/tenants/{tenant_id}/keys/{key_id}/revoke`.
pub async fn revoke(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path((tenant_id, key_id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    signed.check_form(&headers, &form.csrf)?;
    own_key(&state, tenant_id, key_id).await?;
    api::revoke(&state, key_id).await?;
    render(&state, &signed, tenant_id, None, None).await
}

/// `POST /dashboard/tenants/{tenant_id}/keys/{key_id}/rotate`: the new secret, shown once.
pub async fn rotate(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path((tenant_id, key_id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    signed.check_form(&headers, &form.csrf)?;
    own_key(&state, tenant_id, key_id).await?;
    match api::rotate(&state, key_id).await {
        Ok(created) => render(&state, &signed, tenant_id, Some(&created), None).await,
        Err(AppError::Conflict(msg)) => render(&state, &signed, tenant_id, None, Some(&msg)).await,
        Err(e) => Err(e.into()),
    }
}
