//! Results: per-second timeline, the human table, JSON and the SVG plot, and the progress bar.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::workload::{Distribution, OpKind};
use crate::{Args, Shared};

/// Operations completed in each second of the run, with their latencies.
#[derive(Default)]
pub struct Timeline {
    seconds: Mutex<Vec<Histogram<u64>>>,
}

impl Timeline {
    fn merge(&self, second: usize, part: &Histogram<u64>) {
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        while seconds.len() <= second {
            seconds.push(Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"));
        }
        let _ = seconds[second].add(part);
    }

    fn snapshot(&self) -> Vec<Histogram<u64>> {
        self.seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A client's histogram for the current second, merged into the timeline when the second ends
/// (so threads do not contend on every operation).
pub struct SecondRecorder<'a> {
    timeline: &'a Timeline,
    start: Instant,
    second: usize,
    current: Histogram<u64>,
}

impl<'a> SecondRecorder<'a> {
    pub fn new(timeline: &'a Timeline, start: Instant) -> Self {
        SecondRecorder {
            timeline,
            start,
            second: 0,
            current: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
        }
    }

    pub fn record(&mut self, at: Instant, micros: u64) {
        let second = at.saturating_duration_since(self.start).as_secs() as usize;
        if second != self.second {
            self.flush();
            self.second = second;
        }
        self.current.saturating_record(micros);
    }

    pub fn flush(&mut self) {
        if !self.current.is_empty() {
            self.timeline.merge(self.second, &self.current);
            self.current.reset();
        }
    }
}

pub struct Report {
    title: String,
    elapsed: Duration,
    latency: Vec<(OpKind, Histogram<u64>)>,
    total: Histogram<u64>,
    errors: u64,
    timeline: Vec<Histogram<u64>>,
    cpu_seconds: f64,
    cpus: usize,
    settings: serde_json::Value,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &Args,
        distribution: Distribution,
        elapsed: Duration,
        latency: Vec<Histogram<u64>>,
        errors: u64,
        timeline: &Timeline,
        cpu_seconds: f64,
        cpus: usize,
    ) -> Report {
        let mut total = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        let latency: Vec<(OpKind, Histogram<u64>)> = OpKind::ALL
            .iter()
            .copied()
            .zip(latency)
            .filter(|(_, h)| !h.is_empty())
            .collect();
        for (_, h) in &latency {
            let _ = total.add(h);
        }
        let distribution = format!("{distribution:?}").to_lowercase();
        let title =
            format!(
            "{} over {:?} at {}: {} clients, pipeline {}, {} records, {}-byte values, {} keys{}",
            args.workload.name(),
            args.protocol,
            args.addr,
            args.clients,
            args.pipeline,
            args.records,
            args.value_size,
            distribution,
            args.rate.map(|r| format!(", open loop at {r:.0} ops/s")).unwrap_or_default()
        );
        let settings = serde_json::json!({
            "workload": args.workload.name(),
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "addr": args.addr,
            "clients": args.clients,
            "pipeline": args.pipeline,
            "records": args.records,
            "value_size": args.value_size,
            "distribution": distribution,
            "rate": args.rate,
        });
        Report {
            title,
            elapsed,
            latency,
            total,
            errors,
            timeline: timeline.snapshot(),
            cpu_seconds,
            cpus,
            settings,
        }
    }

    fn throughput(&self) -> f64 {
        self.total.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "ops/s", "p50 us", "p99 us", "p999 us", "max us"
        );
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        for (kind, h) in self
            .latency
            .iter()
            .map(|(k, h)| (k.name(), h))
            .chain([("total", &self.total)])
        {
            let _ = writeln!(
                out,
                "{:<18} {:>10} {:>12.0} {:>9} {:>9} {:>9} {:>9}",
                kind,
                h.len(),
                h.len() as f64 / secs,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        let _ = writeln!(
            out,
            "throughput {:.0} ops/s over {:.2} s; errors {}; client CPU {:.2} s = {:.0}% of {} core(s)",
            self.throughput(),
            secs,
            self.errors,
            self.cpu_seconds,
            100.0 * self.cpu_seconds / secs / self.cpus.max(1) as f64,
            self.cpus.max(1)
        );
        let per_second: Vec<String> = self.timeline.iter().map(|h| h.len().to_string()).collect();
        let _ = writeln!(out, "ops per second: {}", per_second.join(" "));
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let percentiles = |h: &Histogram<u64>| {
            serde_json::json!({
                "count": h.len(),
                "mean": h.mean(),
                "p50": h.value_at_quantile(0.5),
                "p90": h.value_at_quantile(0.9),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            })
        };
        let mut latency = serde_json::Map::new();
        for (kind, h) in &self.latency {
            latency.insert(kind.name().to_string(), percentiles(h));
        }
        let timeline: Vec<_> = self
            .timeline
            .iter()
            .enumerate()
            .map(|(second, h)| {
                serde_json::json!({"second": second, "ops": h.len(), "p50": h.value_at_quantile(0.5),
                    "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999)})
            })
            .collect();
        serde_json::json!({
            "settings": self.settings,
            "seconds": self.elapsed.as_secs_f64(),
            "ops": self.total.len(),
            "throughput_ops_per_sec": self.throughput(),
            "latency_us": latency,
            "latency_us_all": percentiles(&self.total),
            "errors": self.errors,
            "timeline": timeline,
            "client_cpu_seconds": self.cpu_seconds,
            "client_cpus": self.cpus,
        })
    }

    /// Two panels: throughput per second, and p50/p99/p999 latency per second.
    pub fn svg(&self) -> String {
        let (width, height, left, right) = (900.0, 560.0, 80.0, 20.0);
        let panel = |top: f64| (top, top + 190.0);
        let seconds = self.timeline.len().max(1);
        let x = |i: usize| left + (width - left - right) * (i as f64 + 0.5) / seconds as f64;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = write!(
            svg,
            r#"<text x="{left}" y="20" font-size="13">{}</text>"#,
            escape(&self.title)
        );
        let draw_panel = |svg: &mut String,
                          (top, bottom): (f64, f64),
                          label: &str,
                          series: &[(&str, &str, Vec<f64>)]| {
            let max = series
                .iter()
                .flat_map(|(_, _, v)| v.iter().copied())
                .fold(0.0f64, f64::max)
                .max(1.0);
            let y = |v: f64| bottom - (bottom - top) * v / max;
            let _ = write!(
                svg,
                r#"<line x1="{left}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/>"#,
                width - right
            );
            let _ = write!(
                svg,
                r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>"#
            );
            for tick in 0..=4 {
                let value = max * tick as f64 / 4.0;
                let _ = write!(
                    svg,
                    r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/>"##,
                    y(value),
                    width - right
                );
                let _ = write!(
                    svg,
                    r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
                    left - 6.0,
                    y(value) + 4.0,
                    value
                );
            }
            let _ = write!(
                svg,
                r#"<text x="{left}" y="{}">{}</text>"#,
                top - 6.0,
                escape(label)
            );
            for (i, (name, color, values)) in series.iter().enumerate() {
                let points: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(s, v)| format!("{:.1},{:.1}", x(s), y(*v)))
                    .collect();
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
                let legend_x = width - right - 110.0 * (series.len() - i) as f64;
                let _ = write!(
                    svg,
                    r#"<text x="{legend_x}" y="{}" fill="{color}">{name}</text>"#,
                    top - 6.0
                );
            }
        };
        let ops: Vec<f64> = self.timeline.iter().map(|h| h.len() as f64).collect();
        draw_panel(
            &mut svg,
            panel(50.0),
            "throughput (ops/s)",
            &[("ops/s", "#1f77b4", ops)],
        );
        let quantile = |q: f64| {
            self.timeline
                .iter()
                .map(|h| h.value_at_quantile(q) as f64)
                .collect::<Vec<_>>()
        };
        draw_panel(
            &mut svg,
            panel(320.0),
            "latency (µs) per second",
            &[
                ("p50", "#2ca02c", quantile(0.5)),
                ("p99", "#ff7f0e", quantile(0.99)),
                ("p999", "#d62728", quantile(0.999)),
            ],
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">seconds since start ({seconds} s)</text>"#,
            (width + left) / 2.0,
            height - 12.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A progress bar on the terminal, updated until the run stops.
pub fn progress(args: &Args, shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    let bar = match (args.duration, args.ops) {
        (Some(secs), _) => indicatif::ProgressBar::new((secs * 1000.0) as u64),
        (None, ops) => indicatif::ProgressBar::new(ops.unwrap_or(100_000)),
    };
    let timed = args.duration.is_some();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::thread::spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) && !bar.is_finished() {
            let done = shared.completed.load(Ordering::Relaxed);
            let elapsed = shared.start.elapsed();
            bar.set_position(if timed {
                elapsed.as_millis() as u64
            } else {
                done
            });
            bar.set_message(format!(
                "{:.0} ops/s",
                done as f64 / elapsed.as_secs_f64().max(1e-3)
            ));
            if !timed && done >= bar.length().unwrap_or(u64::MAX) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
    })
}
