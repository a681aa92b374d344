//! The report as one self-contained HTML page: inline CSS and SVG charts, no script, and a
//! Content-Security-Policy that forbids fetching anything, so the page works offline and cannot
//! leak a capture's contents.

use std::fmt::Write as _;

use super::{
    chart,
    model::{self, Report},
    words,
};

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1240px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}p.lost{font-weight:bold}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
th{background:#f2f2f2}td.n{text-align:right}figure{margin:0}figcaption{font-size:13px;color:#555}\
ul.problems li{color:#a00}";

/// The tables stop here: a page of a busy capture stays small enough to open.
const MAX_GROUP_ROWS: usize = 20;
const MAX_PORT_ROWS: usize = 200;

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
    let over_time = chart::over_time(report)?;
    let sockets = chart::sockets(report)?;
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
        "<p class=\"lost\" id=\"lost\">{}</p><p id=\"delivered\">{}</p></section>",
        escape(&words::losses(&report.losses)),
        escape(&words::delivered(&report.losses)),
    );
    if !report.problems.is_empty() {
        out.push_str("<h2>Unreadable input</h2><ul class=\"problems\">");
        for problem in &report.problems {
            let _ = write!(out, "<li>{}</li>", escape(problem));
        }
        out.push_str("</ul>");
    }
    let _ = write!(
        out,
        "<h2>Failed claims</h2><p>{} failed claim(s) in {} group(s): same port, errno and holder.</p>",
        report.failures,
        report.failure_groups.len()
    );
    table(
        &mut out,
        "failures",
        &[
            "proto",
            "port",
            "claim",
            "count",
            "first",
            "last",
            "who and holder",
            "toward",
        ],
        report
            .failure_groups
            .iter()
            .take(MAX_GROUP_ROWS)
            .map(|group| {
                vec![
                    group.key.proto.name().to_string(),
                    group.key.port.to_string(),
                    words::failed_claim(&group.sample),
                    group.count.to_string(),
                    words::clock(group.first),
                    words::clock(group.last),
                    words::group_who(group),
                    words::group_destinations(group).unwrap_or_default(),
                ]
            }),
    );
    if report.failure_groups.len() > MAX_GROUP_ROWS {
        let _ = write!(
            out,
            "<p id=\"groups-left-out\">The {MAX_GROUP_ROWS} largest of {} groups; \
             <code>portwatch report --json</code> lists them all.</p>",
            report.failure_groups.len()
        );
    }
    out.push_str("<h2>Ports in use over time</h2><section id=\"ephemeral\">");
    let mut ephemeral_text = Vec::new();
    crate::commands::report::text::write_ephemeral(&mut ephemeral_text, report)
        .map_err(|err| format!("laying out the ephemeral summary: {err}"))?;
    for line in String::from_utf8_lossy(&ephemeral_text)
        .lines()
        .filter(|line| !line.is_empty())
    {
        let _ = write!(out, "<p>{}</p>", escape(line.trim()));
    }
    let mut pressure_text = Vec::new();
    crate::commands::report::text::write_pressure(&mut pressure_text, report)
        .map_err(|err| format!("laying out the pressure records: {err}"))?;
    for line in String::from_utf8_lossy(&pressure_text).lines() {
        let _ = write!(out, "<p class=\"pressure\">{}</p>", escape(line));
    }
    let _ = write!(
        out,
        "</section><figure id=\"occupancy\">{}<figcaption>{} in use, per protocol and network \
         namespace (the fullest {}), each bucket of {} at its fullest moment; the dark band is \
         ports held only by TIME_WAIT sockets; red marks on the time axis are failed claims{}.</figcaption></figure>",
        over_time.svg,
        if over_time.ephemeral {
            "Ephemeral ports"
        } else {
            "Watched ports (no ephemeral port was held)"
        },
        chart::MAX_SPACES,
        words::duration(report.ephemeral.bucket_ns),
        if over_time.ceiling_drawn {
            "; the black line is the size of the ephemeral range"
        } else if over_time.ephemeral {
            "; the ephemeral range is far above the peak and not drawn"
        } else {
            ""
        }
    );
    let _ = write!(
        out,
        "<h2>Sockets of listeners and refused ports</h2><figure id=\"sockets\">{}<figcaption>Each bar is one \
         socket holding the port, from its claim to its close; the pale end is TIME_WAIT still \
         holding it. Crosses are failed claims (the first and last of each group). Only ports \
         with listeners, failed claims or few holders are drawn, a port with many sockets up to \
         {} of them. {} row(s) shown{}.</figcaption></figure>",
        sockets.svg,
        model::FEW,
        sockets.rows_shown,
        if sockets.rows_left_out > 0 {
            format!(
                ", {} quieter row(s) left out (at most {} are drawn)",
                sockets.rows_left_out,
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
    out.push_str("<h2>Listeners and other notable ports</h2>");
    let notable = model::notable(report);
    table(
        &mut out,
        "ports",
        &["proto", "port", "sockets", "accepted", "failed", "holders"],
        notable.iter().take(MAX_PORT_ROWS).map(|port| {
            vec![
                port.proto.name().to_string(),
                port.port.to_string(),
                port.holds.to_string(),
                port.accepted.to_string(),
                port.failures.to_string(),
                port.holders
                    .sorted()
                    .into_iter()
                    .map(|(process, count)| format!("{} ({count})", words::process(process)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        }),
    );
    if notable.len() > MAX_PORT_ROWS {
        let _ = write!(
            out,
            "<p id=\"ports-left-out\">The first {MAX_PORT_ROWS} of {} ports; \
             <code>portwatch report --json</code> lists them all.</p>",
            notable.len()
        );
    }
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
