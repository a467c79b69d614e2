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
        // A last, partial second is shown at its rate, so the run does not seem to fall off.
        let per_second: Vec<String> = self
            .throughput_per_second()
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect();
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

    /// Throughput per second of the run: a last, partial second counts at its rate (and is
    /// left out when shorter than a fifth of a second: too few operations to be a rate).
    fn throughput_per_second(&self) -> Vec<f64> {
        let elapsed = self.elapsed.as_secs_f64();
        let mut rates: Vec<f64> = self
            .timeline
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let span = (elapsed - i as f64).clamp(0.0, 1.0);
                if span > 0.0 {
                    h.len() as f64 / span
                } else {
                    0.0
                }
            })
            .collect();
        if self.timeline.len() as f64 > elapsed.floor() && elapsed.fract() < 0.2 {
            rates.truncate(elapsed.floor().max(1.0) as usize);
        }
        rates
    }

    /// Two panels over the seconds of the run: throughput (linear), and latency p50, p99,
    /// p999 and max (logarithmic, so p50 is not flattened under the tail).
    pub fn svg(&self) -> String {
        let (width, height, left, right) = (900.0, 600.0, 80.0, 20.0);
        let ops = self.throughput_per_second();
        let seconds = ops.len().max(1);
        let x = |i: f64| left + (width - left - right) * i / seconds as f64;
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
        let time_ticks = nice_step(seconds as f64, 10.0);
        let draw_panel = |svg: &mut String,
                          (top, bottom): (f64, f64),
                          label: &str,
                          scale: Scale,
                          series: &[(&str, &str, Vec<f64>)]| {
            let max = series
                .iter()
                .flat_map(|(_, _, v)| v.iter().copied())
                .fold(0.0f64, f64::max)
                .max(1.0);
            let (ticks, top_value): (Vec<f64>, f64) = match scale {
                Scale::Linear => {
                    let step = nice_step(max, 5.0);
                    let top_value = (max / step).ceil() * step;
                    let n = (top_value / step).round() as usize;
                    ((0..=n).map(|k| k as f64 * step).collect(), top_value)
                }
                Scale::Log => {
                    let decades = max.log10().ceil().max(1.0) as i32;
                    (
                        (0..=decades).map(|d| 10f64.powi(d)).collect(),
                        10f64.powi(decades),
                    )
                }
            };
            let y = |v: f64| match scale {
                Scale::Linear => bottom - (bottom - top) * v / top_value,
                Scale::Log => bottom - (bottom - top) * v.max(1.0).log10() / top_value.log10(),
            };
            let _ = write!(
                svg,
                r#"<line x1="{left}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>"#,
                width - right
            );
            for value in ticks {
                let _ = write!(
                    svg,
                    r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                    y(value),
                    width - right,
                    left - 6.0,
                    y(value) + 4.0,
                    match scale {
                        Scale::Linear => count_label(value),
                        Scale::Log => micros_label(value),
                    }
                );
            }
            let mut t = 0.0;
            while t <= seconds as f64 + 1e-9 {
                let _ = write!(
                    svg,
                    r#"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1}" stroke="black"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"#,
                    x(t),
                    bottom + 4.0,
                    bottom + 16.0,
                    t
                );
                t += time_ticks;
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
                    .map(|(s, v)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*v)))
                    .collect();
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
                let legend_x = width - right - 80.0 * (series.len() - i) as f64;
                let _ = write!(
                    svg,
                    r#"<text x="{legend_x}" y="{}" fill="{color}">{name}</text>"#,
                    top - 6.0
                );
            }
        };
        draw_panel(
            &mut svg,
            (50.0, 250.0),
            "throughput (ops/s)",
            Scale::Linear,
            &[("ops/s", "#1f77b4", ops.clone())],
        );
        let per_second = |f: &dyn Fn(&Histogram<u64>) -> u64| {
            self.timeline
                .iter()
                .take(seconds)
                .map(|h| f(h) as f64)
                .collect::<Vec<_>>()
        };
        draw_panel(
            &mut svg,
            (320.0, 540.0),
            "latency per second (log scale)",
            Scale::Log,
            &[
                ("p50", "#2ca02c", per_second(&|h| h.value_at_quantile(0.5))),
                ("p99", "#ff7f0e", per_second(&|h| h.value_at_quantile(0.99))),
                (
                    "p999",
                    "#d62728",
                    per_second(&|h| h.value_at_quantile(0.999)),
                ),
                ("max", "#7f7f7f", per_second(&|h| h.max())),
            ],
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">seconds since start ({:.1} s)</text>"#,
            (width + left) / 2.0,
            height - 12.0,
            self.elapsed.as_secs_f64()
        );
        svg.push_str("</svg>\n");
        svg
    }
}

#[derive(Clone, Copy)]
enum Scale {
    Linear,
    Log,
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `range` into about `ticks`.
fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power);
    step.max(if range >= 1.0 { 1.0 } else { step })
}

/// 0, 500, 12K, 1.5M.
fn count_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}K", trim(v / 1e3))
    } else {
        trim(v)
    }
}

/// 1 µs, 100 µs, 1 ms, 10 s.
fn micros_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{} ms", trim(v / 1e3))
    } else {
        format!("{} µs", trim(v))
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_labels_short() {
        assert_eq!(nice_step(37.0, 10.0), 5.0);
        assert_eq!(nice_step(120_000.0, 5.0), 50_000.0);
        assert_eq!(nice_step(3.0, 10.0), 1.0, "whole seconds at least");
        assert_eq!(count_label(150_000.0), "150K");
        assert_eq!(count_label(1_500_000.0), "1.5M");
        assert_eq!(micros_label(1000.0), "1 ms");
        assert_eq!(micros_label(10.0), "10 µs");
    }
}
