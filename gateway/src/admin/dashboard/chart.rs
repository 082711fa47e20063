//! Chart data for `dashboard.js`: a JSON document in a `<script type="application/json">`
//! element (data, never executed, so the Content-Security-Policy needs no inline script),
//! drawn by uPlot into the `div` beside it.

use maud::{html, Markup, PreEscaped};
use serde::Serialize;

/// One line or bar series.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// CSS colour, `#rrggbb`.
    pub color: &'static str,
    /// One value per x.
    pub values: Vec<f64>,
}

/// A time chart.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// Title above the chart.
    pub title: String,
    /// IANA time zone the x axis is labelled in.
    pub tz: String,
    /// Bars (true) or lines.
    pub bars: bool,
    /// Unix seconds of each point.
    pub x: Vec<i64>,
    /// The x axis' range, unix seconds (the range asked for, even where there is no data).
    pub x_range: (i64, i64),
    /// The series.
    pub series: Vec<Series>,
}

/// Success (green) and failure (red) colours.
pub const SUCCESS: &str = "#1b7f3b";
/// Failure colour.
pub const FAILURE: &str = "#b3261e";
/// Neutral colour.
pub const ACCENT: &str = "#2456c9";

/// The chart's element and its data, under id `id`.
pub fn embed(id: &str, chart: &Chart) -> Markup {
    // JSON inside <script>: escape what could end the element or start markup.
    let json = serde_json::to_string(chart)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    html! {
        div.chart id={ (id) "-box" } data-chart=(id) { span.muted { "chart: " (chart.title) } }
        script type="application/json" id=(id) { (PreEscaped(json)) }
    }
}
