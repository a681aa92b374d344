//! The HTML page's charts as SVG, drawn by `plotters` (its SVG backend, no fonts or bitmaps):
//! ports in use over time per protocol and namespace (TIME_WAIT as its own band, failed claims
//! marked, the ephemeral range as the ceiling); a row per socket for the few ports worth it
//! (listeners, ports with failed claims, ports asked for); and the distribution of hold times.

use std::collections::BTreeMap;

use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    model::{self, BUCKETS, Report},
    occupancy,
    record::Process,
    timeline::{End, Hold},
    words,
};
use crate::model::proto::Proto;

/// Rows beyond this are left out of the sockets chart (the busiest are kept, and the page
/// says how many were left out).
pub const MAX_ROWS: usize = 40;
/// Namespaces and protocols drawn over time, fullest first.
pub const MAX_SPACES: usize = 4;

const WIDTH: u32 = 1200;
const FAILURE: RGBColor = RGBColor(214, 39, 40);

/// One row of the sockets chart: a port of a protocol, and a process on it.
type Row = (u16, &'static str, Process);

/// The sockets chart and how many rows it left out.
pub struct Sockets {
    pub svg: String,
    pub rows_shown: usize,
    pub rows_left_out: usize,
}

/// What the over-time chart drew.
pub struct OverTime {
    pub svg: String,
    /// Whether the series are the ephemeral range's (else all watched ports).
    pub ephemeral: bool,
    pub ceiling_drawn: bool,
}

/// The sockets a port's row draws: those kept, or at least its listeners.
fn drawn(port: &model::PortReport) -> &[Hold] {
    if port.sockets.is_empty() {
        &port.listeners
    } else {
        &port.sockets
    }
}

/// Rows with the most activity (holds and failures), at most MAX_ROWS, in port order, of the
/// ports the summary lists.
fn rows(report: &Report) -> (Vec<Row>, usize) {
    let mut activity: BTreeMap<Row, usize> = BTreeMap::new();
    for port in model::notable(report) {
        for hold in drawn(port) {
            *activity
                .entry((port.port, port.proto.name(), hold.process.clone()))
                .or_default() += 1;
        }
    }
    for group in &report.failure_groups {
        if group.key.port != 0 {
            *activity
                .entry((
                    group.key.port,
                    group.key.proto.name(),
                    group.sample.process.clone(),
                ))
                .or_default() += group.count as usize;
        }
    }
    let total = activity.len();
    let mut busiest: Vec<(Row, usize)> = activity.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    busiest.truncate(MAX_ROWS);
    let mut rows: Vec<Row> = busiest.into_iter().map(|(row, _)| row).collect();
    rows.sort();
    let shown = rows.len();
    (rows, total - shown)
}

fn seconds(report: &Report, at: u128) -> f64 {
    at.saturating_sub(report.window.since) as f64 / 1e9
}

/// The socket's own hold (claim to close) and its TIME_WAIT tail, in seconds into the window.
fn spans(report: &Report, hold: &Hold) -> ((f64, f64), Option<(f64, f64)>) {
    let window = &report.window;
    let (start, end) = window.clip(hold);
    let closed = match hold.end {
        End::TimeWait { closed, .. } => closed.unwrap_or(window.since).clamp(start, end),
        _ => end,
    };
    let own = (seconds(report, start), seconds(report, closed));
    let tail = matches!(hold.end, End::TimeWait { .. })
        .then(|| (seconds(report, closed), seconds(report, end)));
    (own, tail)
}

fn error(err: impl std::fmt::Display) -> String {
    format!("drawing the chart: {err}")
}

/// The series' legend, in the upper right corner of either chart.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(error)
}

/// Says in the middle of an empty chart why it is empty.
fn empty(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    why: &str,
    height: u32,
) -> Result<(), String> {
    root.draw(&Text::new(
        why,
        (WIDTH as i32 / 2, height as i32 / 2),
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(error)
}

/// The area under a step line, down to zero.
fn area(points: Vec<(f64, f64)>, style: ShapeStyle) -> Polygon<(f64, f64)> {
    let mut outline = points;
    if let (Some(&(first, _)), Some(&(last, _))) = (outline.first(), outline.last()) {
        outline.push((last, 0.0));
        outline.push((first, 0.0));
    }
    Polygon::new(outline, style)
}

/// Ports in use over the window, one series per namespace and protocol (the fullest few), with
/// the ports held only by TIME_WAIT as a pale band under each, failed claims as marks on the
/// time axis and, when the peak comes near it, the ephemeral range's size as a line.
pub fn over_time(report: &Report) -> Result<OverTime, String> {
    let ephemeral = &report.ephemeral;
    let uses_ephemeral = ephemeral
        .spaces
        .iter()
        .any(|(_, space)| space.ephemeral.peak > 0);
    let counter = |space: &occupancy::Space| {
        if uses_ephemeral {
            space.ephemeral.clone()
        } else {
            space.all.clone()
        }
    };
    let mut spaces: Vec<(String, occupancy::Counter)> = ephemeral
        .spaces
        .iter()
        .map(|((netns, proto), space)| {
            let name = match netns {
                Some(netns) => format!("{} netns {netns}", proto.name()),
                None => proto.name().to_string(),
            };
            (name, counter(space))
        })
        .filter(|(_, counter)| counter.peak > 0)
        .collect();
    spaces.sort_by(|a, b| b.1.peak.cmp(&a.1.peak).then_with(|| a.0.cmp(&b.0)));
    spaces.truncate(MAX_SPACES);
    let bucket_s = ephemeral.bucket_ns as f64 / 1e9;
    let offset = ephemeral.origin.saturating_sub(report.window.since) as f64 / 1e9;
    let span = seconds(report, report.window.until).max(1e-6);
    let highest = spaces.iter().map(|(_, c)| c.peak).max().unwrap_or(0).max(1);
    let size = ephemeral.range_size() as u32;
    let ceiling_drawn = uses_ephemeral && size > 0 && highest.saturating_mul(5) >= size;
    let top = if ceiling_drawn {
        size.max(highest)
    } else {
        highest
    };
    let top = f64::from(top) * 1.12;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..span * 1.2, 0f64..top)
            .map_err(error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start of the window")
            .y_desc(if uses_ephemeral {
                "ephemeral ports in use"
            } else {
                "watched ports in use"
            })
            .draw()
            .map_err(error)?;
        for (index, (name, counter)) in spaces.iter().enumerate() {
            let colour = Palette99::pick(index).to_rgba();
            let points = occupancy::filled(&counter.series);
            let at = |i: usize| offset + i as f64 * bucket_s;
            // After the last change, the ports stay as they were until the window ends.
            let after = occupancy::settled(&counter.series);
            let step = |value: &dyn Fn(&(u32, u32)) -> u32| -> Vec<(f64, f64)> {
                let mut line: Vec<(f64, f64)> = points
                    .iter()
                    .enumerate()
                    .flat_map(|(i, point)| {
                        let y = f64::from(value(point));
                        [(at(i), y), (at(i + 1).min(span), y)]
                    })
                    .collect();
                let y = f64::from(value(&after));
                line.extend([(at(points.len()).min(span), y), (span, y)]);
                line
            };
            chart
                .draw_series([area(step(&|point| point.0), colour.mix(0.35).filled())])
                .map_err(error)?
                .label(format!("{name}: in use (peak {})", counter.peak))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.35).filled())
                });
            chart
                .draw_series([area(step(&|point| point.1), colour.mix(0.8).filled())])
                .map_err(error)?
                .label(format!("{name}: only TIME_WAIT"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.8).filled())
                });
        }
        if ceiling_drawn {
            chart
                .draw_series([PathElement::new(
                    [(0.0, f64::from(size)), (span, f64::from(size))],
                    BLACK.stroke_width(2),
                )])
                .map_err(error)?
                .label(format!("ephemeral range: {size} ports"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        }
        let marks: Vec<_> = ephemeral
            .failures
            .iter()
            .flat_map(|counts| counts.iter().enumerate())
            .filter(|(_, count)| **count > 0)
            .map(|(i, _)| {
                let x = offset + (i as f64 + 0.5) * bucket_s;
                TriangleMarker::new((x, top * 0.03), 6, FAILURE.filled())
            })
            .collect();
        let failed = report.failures;
        chart
            .draw_series(marks)
            .map_err(error)?
            .label(format!("failed claims ({failed})"))
            .legend(|(x, y)| TriangleMarker::new((x + 7, y), 5, FAILURE.filled()));
        legend(&mut chart)?;
        if spaces.is_empty() {
            empty(&root, "no port was held in this window", 380)?;
        }
        root.present().map_err(error)?;
    }
    Ok(OverTime {
        svg,
        ephemeral: uses_ephemeral,
        ceiling_drawn,
    })
}

pub fn sockets(report: &Report) -> Result<Sockets, String> {
    let (rows, rows_left_out) = rows(report);
    // plotters counts rows from the bottom: the first row (the lowest port) goes on top.
    let index: BTreeMap<&Row, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| (row, rows.len() - 1 - i))
        .collect();
    let processes: Vec<&Process> = {
        let mut processes: Vec<&Process> = rows.iter().map(|row| &row.2).collect();
        processes.sort();
        processes.dedup();
        processes
    };
    let colour = |process: &Process| {
        Palette99::pick(processes.iter().position(|p| *p == process).unwrap_or(0)).to_rgba()
    };
    let height = 140 + 26 * rows.len().max(1) as u32;
    let span = seconds(report, report.window.until).max(1e-6);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(error)?;
        let row_count = rows.len().max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(230)
            // A fifth more room on the right keeps the legend off the bars.
            .build_cartesian_2d(0f64..span * 1.2, (0..row_count).into_segmented())
            .map_err(error)?;
        let label = |value: &SegmentValue<i32>| match value {
            SegmentValue::CenterOf(i) => rows
                .len()
                .checked_sub(1 + *i as usize)
                .and_then(|row| rows.get(row))
                .map_or(String::new(), |row| {
                    format!("{} {} {}", row.1, row.0, words::process(&row.2))
                }),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len().max(1))
            .y_label_formatter(&label)
            .x_desc("seconds since the start of the window")
            .draw()
            .map_err(error)?;
        let bar = |row: usize, (from, to): (f64, f64)| {
            let to = to.max(from + span / 1000.0);
            [
                (from, SegmentValue::Exact(row as i32)),
                (to, SegmentValue::Exact(row as i32 + 1)),
            ]
        };
        for process in &processes {
            let colour = colour(process);
            let mut bars = Vec::new();
            for port in &report.ports {
                let key_of = |p: &Process| (port.port, port.proto.name(), p.clone());
                for hold in drawn(port).iter().filter(|hold| &hold.process == *process) {
                    let Some(&row) = index.get(&key_of(&hold.process)) else {
                        continue;
                    };
                    let (own, tail) = spans(report, hold);
                    bars.push(Rectangle::new(bar(row, own), colour.filled()));
                    if let Some(tail) = tail {
                        bars.push(Rectangle::new(bar(row, tail), colour.mix(0.3).filled()));
                    }
                }
            }
            chart
                .draw_series(bars)
                .map_err(error)?
                .label(words::process(process))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        let mut marks = Vec::new();
        for group in &report.failure_groups {
            let key = (
                group.key.port,
                group.key.proto.name(),
                group.sample.process.clone(),
            );
            if let Some(&row) = index.get(&key) {
                let mut times = vec![group.first];
                if group.last != group.first {
                    times.push(group.last);
                }
                for at in times {
                    marks.push(Cross::new(
                        (seconds(report, at), SegmentValue::CenterOf(row as i32)),
                        7,
                        FAILURE.stroke_width(3),
                    ));
                }
            }
        }
        chart
            .draw_series(marks)
            .map_err(error)?
            .label("failed claim (first and last of a group)")
            .legend(|(x, y)| Cross::new((x + 7, y), 5, FAILURE.stroke_width(3)));
        legend(&mut chart)?;
        if rows.is_empty() {
            empty(
                &root,
                "no listener, refused port or port with few holders in this window",
                height,
            )?;
        }
        root.present().map_err(error)?;
    }
    Ok(Sockets {
        svg,
        rows_shown: rows.len(),
        rows_left_out,
    })
}

/// Holds whose claim and close the capture saw, per decade, per protocol.
pub fn hold_times(report: &Report) -> Result<(String, u32), String> {
    let counts = &report.hold_times;
    let total = counts.iter().flatten().sum();
    let highest = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0..BUCKETS.len() as i32 * 2).into_segmented(),
                0u32..highest + highest / 10 + 1,
            )
            .map_err(error)?;
        let label = |value: &SegmentValue<i32>| match value {
            SegmentValue::CenterOf(i) if i % 2 == 0 => BUCKETS
                .get((*i / 2) as usize)
                .map_or(String::new(), |bucket| bucket.to_string()),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(BUCKETS.len() * 2)
            .x_label_formatter(&label)
            .x_desc("time a socket held its port (claim to close)")
            .y_desc("sockets")
            .draw()
            .map_err(error)?;
        for (proto, offset, colour) in [(Proto::Tcp, 0, BLUE), (Proto::Udp, 1, GREEN)] {
            let series = counts[usize::from(proto == Proto::Udp)];
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(colour.mix(0.7).filled())
                        .margin(2)
                        .data(
                            series
                                .iter()
                                .enumerate()
                                .map(|(i, count)| (i as i32 * 2 + offset, *count)),
                        ),
                )
                .map_err(error)?
                .label(proto.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        legend(&mut chart)?;
        root.present().map_err(error)?;
    }
    Ok((svg, total))
}
