//! The soak's samples as one PNG: memory, file descriptors and threads per
//! process, store bytes per stream, keys per family and the users' work,
//! over time, with the faults and the end of the warm-up marked, so a
//! reader sees at a glance whether anything grows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::sample::Sample;
use crate::faults::FaultKind;

/// Fonts looked for, in order (Debian and Ubuntu paths; Chromium's packages
/// bring one of them). Without any, the plot has no text.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the first font found as `sans-serif`, once; whether one was.
fn font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONTS.iter().any(|path| {
            let Ok(bytes) = std::fs::read(path) else {
                return false;
            };
            // Registered fonts live as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// One panel: named lines of (minutes, value).
struct Panel {
    title: &'static str,
    unit: &'static str,
    lines: BTreeMap<String, Vec<(f64, f64)>>,
}

fn panels(samples: &[Sample]) -> Vec<Panel> {
    type Lines = BTreeMap<String, Vec<(f64, f64)>>;
    let (mut rss, mut fds, mut threads) = (Lines::new(), Lines::new(), Lines::new());
    let (mut store, mut keys, mut work) = (Lines::new(), Lines::new(), Lines::new());
    for s in samples {
        let t = s.elapsed_secs / 60.0;
        for (name, p) in &s.processes {
            let push = |m: &mut Lines, v: f64| m.entry(name.clone()).or_default().push((t, v));
            push(&mut rss, p.rss_kib as f64 / 1024.0);
            push(&mut fds, p.fds as f64);
            push(&mut threads, p.threads as f64);
        }
        for (name, st) in &s.streams {
            store
                .entry(name.clone())
                .or_default()
                .push((t, st.bytes as f64 / (1024.0 * 1024.0)));
        }
        for (family, n) in &s.keys {
            keys.entry(family.clone()).or_default().push((t, *n as f64));
        }
        work.entry("sessions".to_string())
            .or_default()
            .push((t, s.activity.sessions as f64 / 1000.0));
        work.entry("questions".to_string())
            .or_default()
            .push((t, s.activity.questions as f64 / 1000.0));
    }
    vec![
        Panel {
            title: "resident memory per process",
            unit: "MiB",
            lines: rss,
        },
        Panel {
            title: "open file descriptors per process",
            unit: "fds",
            lines: fds,
        },
        Panel {
            title: "threads per process",
            unit: "threads",
            lines: threads,
        },
        Panel {
            title: "JetStream store per stream",
            unit: "MiB",
            lines: store,
        },
        Panel {
            title: "sessions bucket keys per family",
            unit: "keys",
            lines: keys,
        },
        Panel {
            title: "users' work so far",
            unit: "thousands",
            lines: work,
        },
    ]
}

/// Draws `samples` into `path` (PNG); `faults` are marked as pale red lines,
/// the end of the warm-up as a dashed one.
pub(super) fn draw(
    path: &Path,
    samples: &[Sample],
    faults: &[(Duration, FaultKind)],
    warmup: Duration,
) -> anyhow::Result<()> {
    let text = font();
    let root = BitMapBackend::new(path, (1600, 1500)).into_drawing_area();
    root.fill(&WHITE)?;
    let end_min = samples
        .last()
        .map_or(1.0, |s| s.elapsed_secs / 60.0)
        .max(0.1);
    for (panel, area) in panels(samples).iter().zip(root.split_evenly((3, 2))) {
        let top = panel
            .lines
            .values()
            .flatten()
            .map(|p| p.1)
            .fold(0.0_f64, f64::max)
            .max(1.0)
            * 1.1;
        let mut builder = ChartBuilder::on(&area);
        builder
            .margin(12)
            .x_label_area_size(if text { 35 } else { 5 })
            .y_label_area_size(if text { 60 } else { 5 });
        if text {
            builder.caption(panel.title, ("sans-serif", 22));
        }
        let mut chart = builder.build_cartesian_2d(0.0..end_min, 0.0..top)?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0));
        if text {
            mesh.x_desc("minutes")
                .y_desc(panel.unit)
                .label_style(("sans-serif", 14));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        for (at, _) in faults {
            let x = at.as_secs_f64() / 60.0;
            chart.draw_series(LineSeries::new(
                [(x, 0.0), (x, top)],
                RGBColor(235, 160, 160),
            ))?;
        }
        let w = warmup.as_secs_f64() / 60.0;
        chart.draw_series(DashedLineSeries::new(
            [(w, 0.0), (w, top)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))?;
        for (i, (name, points)) in panel.lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series = chart.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?;
            if text {
                series.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
