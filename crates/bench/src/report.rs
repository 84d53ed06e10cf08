//! Renders the results three ways: a plain-text table for the terminal and
//! CI logs, `results.json` with every raw sample, and `results.svg`, a small
//! hand-written bar chart (one panel per measure, p50 bars, p95 whiskers).
//! Pure functions of [`Results`], so they are tested without containerd.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::results::{Better, Measure, Results};

/// The table printed on stdout.
pub fn table(r: &Results) -> String {
    let header = [
        "measure", "series", "n", "min", "p50", "p95", "max", "unit", "ratio",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for m in &r.measures {
        for (i, s) in m.series.iter().enumerate() {
            let nums = match &s.summary {
                Some(x) => [
                    x.n.to_string(),
                    fmt_num(x.min),
                    fmt_num(x.p50),
                    fmt_num(x.p95),
                    fmt_num(x.max),
                ],
                None => ["0".into(), "-".into(), "-".into(), "-".into(), "-".into()],
            };
            let [n, min, p50, p95, max] = nums;
            rows.push([
                if i == 0 {
                    m.title.clone()
                } else {
                    String::new()
                },
                s.label.clone(),
                n,
                min,
                p50,
                p95,
                max,
                if i == 0 {
                    m.unit.label().to_string()
                } else {
                    String::new()
                },
                if i == 0 { ratio_text(m) } else { String::new() },
            ]);
        }
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Text columns are left-aligned, numbers right-aligned.
    let numeric = [false, false, true, true, true, true, true, false, false];
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if numeric[i] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string()
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "wasm-bench {} · containerd {} ({}) · namespace {} · wasm shim {} · {}",
        r.tool_version,
        r.containerd.version,
        r.containerd.address,
        r.containerd.namespace,
        r.config.shim_mode,
        r.timestamp
    );
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&header[..]));
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(total));
    for row in &rows {
        let _ = writeln!(out, "{}", line(&row[..]));
    }
    let _ = writeln!(
        out,
        "ratio: how many times better the first series' p50 is than the second's (above 1: the first wins)"
    );
    if !r.errors.is_empty() {
        let _ = writeln!(out, "errors:");
        for e in &r.errors {
            let _ = writeln!(out, "  {}: {}", e.measure, e.error.replace('\n', "\n    "));
        }
    }
    out
}

fn ratio_text(m: &Measure) -> String {
    match m.ratio {
        Some(x) => format!("{x:.2}x {}", m.ratio_label),
        None => "-".to_string(),
    }
}

/// A number with as many decimals as its size deserves.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `results.json`: the whole document, pretty-printed.
pub fn json(r: &Results) -> Result<String> {
    serde_json::to_string_pretty(r).context("serialize the results")
}

const SVG_WIDTH: f64 = 820.0;
const LABEL_X: f64 = 16.0;
const BAR_X: f64 = 140.0;
const BAR_MAX_W: f64 = 440.0;
const PANEL_TITLE_H: f64 = 26.0;
const BAR_H: f64 = 16.0;
const BAR_STEP: f64 = 24.0;
const PANEL_GAP: f64 = 16.0;
const HEADER_H: f64 = 58.0;
const COLORS: [&str; 2] = ["#654ff0", "#9aa0a6"];

/// `results.svg`: one panel per measure, each on its own linear scale, with
/// a bar at each series' p50 and a whisker out to its p95.
pub fn svg(r: &Results) -> String {
    let panel_h = PANEL_TITLE_H + 2.0 * BAR_STEP + PANEL_GAP;
    let height = HEADER_H + panel_h * r.measures.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH:.0}" height="{height:.0}" viewBox="0 0 {SVG_WIDTH:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{SVG_WIDTH:.0}" height="{height:.0}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{LABEL_X}" y="22" font-size="16" font-weight="bold">wasm-bench: p50 (bars) and p95 (whiskers) per measure</text>"#
    );
    let _ = writeln!(
        out,
        r##"<text x="{LABEL_X}" y="42" fill="#555555">{}</text>"##,
        esc(&format!(
            "containerd {} · {} · {} CPUs · {}",
            r.containerd.version, r.host.kernel, r.host.cpus, r.timestamp
        ))
    );
    if r.measures.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{LABEL_X}" y="{:.1}">no measures</text>"#,
            HEADER_H + 18.0
        );
    }
    for (i, m) in r.measures.iter().enumerate() {
        let top = HEADER_H + panel_h * i as f64;
        panel(&mut out, m, top);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, m: &Measure, top: f64) {
    let better = match m.better {
        Better::Lower => "lower is better",
        Better::Higher => "higher is better",
    };
    let ratio = match m.ratio {
        Some(x) => format!(" · {x:.2}x {}", m.ratio_label),
        None => String::new(),
    };
    let _ = writeln!(out, r#"<g id="{}">"#, esc(&m.id));
    let _ = writeln!(
        out,
        r#"<text x="{LABEL_X}" y="{:.1}" font-weight="bold">{}</text>"#,
        top + 17.0,
        esc(&format!(
            "{} ({}, {better}){ratio}",
            m.title,
            m.unit.label()
        ))
    );
    // Each panel on its own scale: from 0 to the largest p95 (or p50).
    let scale = m
        .series
        .iter()
        .filter_map(|s| s.summary)
        .map(|s| s.p95.max(s.p50))
        .fold(0.0_f64, f64::max);
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    let x_of = |v: f64| BAR_X + (v.max(0.0) / scale).min(1.0) * BAR_MAX_W;
    for (i, s) in m.series.iter().enumerate() {
        let y = top + PANEL_TITLE_H + BAR_STEP * i as f64;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<text x="{LABEL_X}" y="{:.1}">{}</text>"#,
            y + 12.5,
            esc(&s.label)
        );
        let Some(sum) = s.summary else {
            let _ = writeln!(
                out,
                r##"<text x="{BAR_X}" y="{:.1}" fill="#999999">no samples</text>"##,
                y + 12.5
            );
            continue;
        };
        let x50 = x_of(sum.p50);
        let x95 = x_of(sum.p95);
        let _ = writeln!(
            out,
            r#"<rect x="{BAR_X}" y="{y:.1}" width="{:.1}" height="{BAR_H}" fill="{color}"/>"#,
            (x50 - BAR_X).max(1.0)
        );
        if x95 > x50 {
            let mid = y + BAR_H / 2.0;
            let _ = writeln!(
                out,
                r##"<line x1="{x50:.1}" y1="{mid:.1}" x2="{x95:.1}" y2="{mid:.1}" stroke="#333333" stroke-width="1.5"/>"##
            );
            let _ = writeln!(
                out,
                r##"<line x1="{x95:.1}" y1="{:.1}" x2="{x95:.1}" y2="{:.1}" stroke="#333333" stroke-width="1.5"/>"##,
                y + 3.0,
                y + BAR_H - 3.0
            );
        }
        let value = if sum.n > 1 {
            format!(
                "{} (p95 {}) {}",
                fmt_num(sum.p50),
                fmt_num(sum.p95),
                m.unit.label()
            )
        } else {
            format!("{} {}", fmt_num(sum.p50), m.unit.label())
        };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x95.max(x50) + 6.0,
            y + 12.5,
            esc(&value)
        );
    }
    out.push_str("</g>\n");
}

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes `results.json` and `results.svg` into `dir` (created if needed)
/// and returns their paths.
pub fn write(r: &Results, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json_path = dir.join("results.json");
    std::fs::write(&json_path, json(r)? + "\n")
        .with_context(|| format!("write {}", json_path.display()))?;
    let svg_path = dir.join("results.svg");
    std::fs::write(&svg_path, svg(r)).with_context(|| format!("write {}", svg_path.display()))?;
    Ok((json_path, svg_path))
}

/// Seconds since the Unix epoch as RFC 3339 in UTC, e.g. `2023-11-14T22:13:20Z`.
pub fn rfc3339_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{ContainerdInfo, HostInfo, MeasureError, RunConfig, Series, Unit};

    fn sample() -> Results {
        let wasm = Series::new("wasm", "io.containerd.wasmtime.v1", vec![10.0, 12.0, 11.0]);
        let runc = Series::new("runc", "io.containerd.runc.v2", vec![30.0, 33.0, 31.0]);
        let mem_a = Series::new("wasm", "io.containerd.wasmtime.v1", vec![4.5])
            .with_details(serde_json::json!({"processes": []}));
        let mem_b = Series::new("runc", "io.containerd.runc.v2", vec![]);
        Results {
            tool: "wasm-bench".into(),
            tool_version: "0.1.0".into(),
            timestamp: rfc3339_utc(1_700_000_000),
            unix_time: 1_700_000_000,
            containerd: ContainerdInfo {
                version: "1.7.24".into(),
                revision: "abc".into(),
                address: "/tmp/x/c.sock".into(),
                namespace: "ns".into(),
                private: true,
            },
            host: HostInfo {
                kernel: "6.1.0".into(),
                cpus: 2,
            },
            config: RunConfig {
                iterations: 3,
                throughput_tasks: 10,
                concurrency: 2,
                idle: vec![1],
                first_runs: 1,
                cached_runs: 2,
                quick: true,
                shim_mode: "per-container".into(),
            },
            measures: vec![
                Measure::new(
                    "cold_api_total",
                    "cold start <API> & co",
                    Unit::Ms,
                    Better::Lower,
                    wasm,
                    runc,
                ),
                Measure::new(
                    "idle_pss",
                    "idle PSS",
                    Unit::MiB,
                    Better::Lower,
                    mem_a,
                    mem_b,
                ),
            ],
            errors: vec![MeasureError {
                measure: "throughput".into(),
                error: "boom\nsecond line".into(),
            }],
        }
    }

    #[test]
    fn table_has_every_series_and_the_ratio() {
        let t = table(&sample());
        assert!(t.contains("cold start <API> & co"), "{t}");
        assert!(t.contains("wasm"));
        assert!(t.contains("runc"));
        // p50s: 11 and 31 → 31/11.
        assert!(t.contains("2.82x runc/wasm"), "{t}");
        assert!(t.contains("throughput: boom\n    second line"), "{t}");
        // A series without samples shows dashes, not a panic.
        assert!(
            t.lines().any(|l| l.contains("runc") && l.contains(" - ")),
            "{t}"
        );
    }

    #[test]
    fn json_round_trips_the_raw_samples() {
        let dir = tempfile::tempdir().unwrap();
        let (json_path, svg_path) = write(&sample(), &dir.path().join("out")).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["containerd"]["version"], "1.7.24");
        let m = &v["measures"][0];
        assert_eq!(m["unit"], "ms");
        assert_eq!(m["better"], "lower");
        assert_eq!(
            m["series"][0]["samples"],
            serde_json::json!([10.0, 12.0, 11.0])
        );
        assert_eq!(m["series"][0]["summary"]["p50"], 11.0);
        assert_eq!(m["series"][1]["runtime"], "io.containerd.runc.v2");
        assert!(m["series"][0].get("details").is_none());
        assert_eq!(
            v["measures"][1]["series"][0]["details"]["processes"],
            serde_json::json!([])
        );
        assert!(v["measures"][1]["series"][1]["summary"].is_null());
        assert_eq!(v["errors"][0]["measure"], "throughput");
        assert!(std::fs::read_to_string(svg_path)
            .unwrap()
            .starts_with("<svg"));
    }

    #[test]
    fn svg_is_well_formed_and_escaped() {
        let s = svg(&sample());
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(s.ends_with("</svg>\n"));
        assert!(s.contains("cold start &lt;API&gt; &amp; co"));
        assert!(!s.contains("<API>"));
        // One group per measure, closed.
        assert_eq!(s.matches("<g ").count(), 2);
        assert_eq!(s.matches("</g>").count(), 2);
        // Background + three bars (the empty series has none).
        assert_eq!(s.matches("<rect").count(), 4);
        assert!(s.contains("no samples"));
        // Every opened text element is closed.
        assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
    }

    #[test]
    fn svg_without_measures_still_renders() {
        let mut r = sample();
        r.measures.clear();
        let s = svg(&r);
        assert!(s.contains("no measures"));
        assert!(s.ends_with("</svg>\n"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn numbers_get_sensible_precision() {
        assert_eq!(fmt_num(1234.56), "1235");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
    }
}
