//! The report as one self-contained HTML page: inline CSS and SVG charts, no script, and a
//! Content-Security-Policy that forbids fetching anything, so the page works offline and cannot
//! leak a capture's contents.

use std::fmt::Write as _;

use super::{chart, model::Report, words};

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1240px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}p.lost{font-weight:bold}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
th{background:#f2f2f2}td.n{text-align:right}figure{margin:0}figcaption{font-size:13px;color:#555}\
ul.problems li{color:#a00}";

/// The holders table stops here: a page of a busy capture stays small enough to open.
const MAX_HOLDER_ROWS: usize = 2000;

/// Text safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A table with a header row; every cell is escaped.
fn table(out: &mut String, id: &str, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(out, "<table id=\"{id}\"><tr>");
    for cell in head {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

pub fn page(report: &Report) -> Result<String, String> {
    let occupancy = chart::occupancy(report)?;
    let (hold_times, timed_holds) = chart::hold_times(report)?;
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>portwatch report</title><style>",
    );
    out.push_str(STYLE);
    out.push_str("</style></head><body><h1>portwatch report</h1><section id=\"coverage\">");
    for line in words::coverage(report) {
        let _ = write!(out, "<p>{}</p>", escape(&line));
    }
    let _ = write!(
        out,
        "<p class=\"lost\" id=\"lost\">{}</p><p id=\"ephemeral\">{}</p></section>",
        escape(&words::losses(&report.losses)),
        escape(&words::pressure(&report.pressure, words::watching(report)))
    );
    for pressure in &report.pressure_events {
        let _ = write!(
            out,
            "<p class=\"pressure\">pressure: {}</p>",
            escape(&words::pressure_event(pressure))
        );
    }
    if !report.problems.is_empty() {
        out.push_str("<h2>Unreadable input</h2><ul class=\"problems\">");
        for problem in &report.problems {
            let _ = write!(out, "<li>{}</li>", escape(problem));
        }
        out.push_str("</ul>");
    }
    let _ = write!(
        out,
        "<h2>Port occupancy</h2><figure id=\"occupancy\">{}<figcaption>Each bar is one socket holding \
         the port, from its claim to its close; the pale end is TIME_WAIT still holding it. Crosses \
         are failed claims. {} row(s) shown{}.</figcaption></figure>",
        occupancy.svg,
        occupancy.rows_shown,
        if occupancy.rows_left_out > 0 {
            format!(
                ", {} quieter row(s) left out (at most {} are drawn)",
                occupancy.rows_left_out,
                chart::MAX_ROWS
            )
        } else {
            String::new()
        }
    );
    let _ = write!(
        out,
        "<h2>Hold times</h2><figure id=\"hold-times\">{hold_times}<figcaption>{timed_holds} socket(s) \
         whose claim and close are both in the capture.</figcaption></figure>"
    );
    out.push_str("<h2>Failed claims</h2>");
    let failures = report
        .ports
        .iter()
        .flat_map(|port| &port.failures)
        .chain(&report.portless_failures);
    table(
        &mut out,
        "failures",
        &["time", "proto", "port", "process", "claim", "blocked by"],
        failures.map(|failure| {
            vec![
                words::clock(failure.ts),
                failure.proto.name().to_string(),
                failure.port.to_string(),
                words::process(&failure.process),
                words::failed_claim(failure),
                words::blocker(failure),
            ]
        }),
    );
    out.push_str("<h2>Busiest processes</h2>");
    table(
        &mut out,
        "busiest",
        &["process", "claims", "failed", "ports", "held"],
        report.busiest.iter().map(|activity| {
            vec![
                words::process(&activity.process),
                activity.claims.to_string(),
                activity.failures.to_string(),
                activity.ports.to_string(),
                words::duration(activity.held_ns),
            ]
        }),
    );
    out.push_str("<h2>Holders</h2>");
    let all_holds = report
        .ports
        .iter()
        .map(|port| port.holds.len())
        .sum::<usize>();
    if all_holds > MAX_HOLDER_ROWS {
        let _ = write!(
            out,
            "<p id=\"holders-left-out\">The first {MAX_HOLDER_ROWS} of {all_holds} holds, by port; \
             <code>portwatch report --json</code> lists them all.</p>"
        );
    }
    let holds = report
        .ports
        .iter()
        .flat_map(|port| port.holds.iter().map(move |hold| (port, hold)))
        .take(MAX_HOLDER_ROWS);
    table(
        &mut out,
        "holders",
        &["proto", "port", "process", "from", "to", "how"],
        holds.map(|(port, hold)| {
            vec![
                port.proto.name().to_string(),
                port.port.to_string(),
                words::process(&hold.process),
                words::hold_start(hold),
                words::hold_end(hold),
                words::hold_detail(hold),
            ]
        }),
    );
    out.push_str("</body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_open_markup() {
        assert_eq!(
            escape("<script>\"a\" & 'b'"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;"
        );
    }
}
