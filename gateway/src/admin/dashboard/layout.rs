//! The shell of every signed-in page: head (stylesheets, the charting script), the navigation
//! of the tenant being looked at, who is signed in, and the sign-out form.

use maud::{html, Markup, DOCTYPE};
use uuid::Uuid;

use super::super::auth::Caller;
use super::signed_in::SignedIn;

/// The pages of a tenant, in navigation order: (path segment, title).
pub const TENANT_PAGES: &[(&str, &str)] = &[
    ("overview", "Overview"),
    ("usage", "Usage"),
    ("keys", "Keys"),
    ("limits", "Limits and plan"),
    ("invoices", "Invoices"),
];

/// The tenant a page is about: its id and name.
#[derive(Debug, Clone, Copy)]
pub struct TenantRef<'a> {
    /// Tenant id.
    pub id: Uuid,
    /// Tenant name.
    pub name: &'a str,
}

/// A whole page: `title`, the navigation (of `tenant`, with `current` highlighted), and `body`.
pub fn page(
    title: &str,
    signed: &SignedIn,
    tenant: Option<TenantRef<'_>>,
    current: &str,
    body: Markup,
) -> Markup {
    let who = match signed.caller {
        Caller::Operator => "operator".to_string(),
        Caller::TenantAdmin { .. } => match tenant {
            Some(t) => format!("tenant admin of {}", t.name),
            None => "tenant admin".to_string(),
        },
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " - maas" }
                link rel="stylesheet" href="/dashboard/assets/vendor/uplot/uPlot.min.css";
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                script src="/dashboard/assets/vendor/uplot/uPlot.iife.min.js" defer {}
                script src="/dashboard/assets/dashboard.js" defer {}
            }
            body {
                header {
                    span.brand { "maas" }
                    nav {
                        @if signed.caller == Caller::Operator {
                            a href="/dashboard/operator" class=[(current == "operator").then_some("current")] { "All tenants" }
                        }
                        @if let Some(t) = tenant {
                            @for (path, name) in TENANT_PAGES {
                                a href={ "/dashboard/tenants/" (t.id) "/" (path) }
                                    class=[(current == *path).then_some("current")] { (name) }
                            }
                        }
                    }
                    span.who id="who" { (who) }
                    form method="post" action="/dashboard/sign-out" {
                        input type="hidden" name="csrf" value=(signed.session.csrf());
                        button.secondary type="submit" id="sign-out" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) @if let Some(t) = tenant { span.muted { " · " (t.name) } } }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field of a state-changing form.
pub fn csrf_field(signed: &SignedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.session.csrf()); }
}
