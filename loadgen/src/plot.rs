//! A latency-percentile plot as hand-written SVG: percentile on a log "1/(1-p)" x axis (so the
//! tail gets as much room as the median), latency on a linear y axis.

use std::fmt::Write as _;

use crate::histo::Hist;

/// One line on the plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub hist: &'a Hist,
    pub color: &'a str,
}

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis (1, 2 or 5 times a power of ten).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Renders the plot. The x axis runs from p0 (1/(1-p) = 1) to the largest "nines" the data
/// supports (at least 99.9%, at most 99.999%).
pub fn render(title: &str, subtitle: &str, series: &[Series<'_>]) -> String {
    let total = series.iter().map(|s| s.hist.len()).max().unwrap_or(0);
    // Enough samples to resolve a percentile: 1/(1-p) <= count.
    let nines = ((total.max(1) as f64).log10().ceil()).clamp(3.0, 5.0);
    let x_max = nines; // log10(1/(1-p))
    let max_ms = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| s.hist.value_at_quantile(1.0 - 10f64.powf(-x_max)) as f64 / 1000.0)
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(max_ms * 1.05);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_max * pw;
    let py = |ms: f64| TOP + ph - (ms / y_max).min(1.0) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        LEFT,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" fill="#555">{}</text>"##,
        LEFT,
        escape(subtitle)
    );
    // Grid: x at each "nine", y at fifths.
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for k in 0..=(x_max as usize) {
        let x = px(k as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 18.0,
            labels[k.min(labels.len() - 1)]
        );
    }
    // The median, between 0% and 90%.
    let x50 = px(2f64.log10());
    let _ = writeln!(
        s,
        r##"<line x1="{x50:.1}" y1="{TOP}" x2="{x50:.1}" y2="{:.1}" stroke="#eee" stroke-dasharray="4 4"/><text x="{x50:.1}" y="{:.1}" text-anchor="middle" fill="#888">50%</text>"##,
        TOP + ph,
        TOP + ph + 18.0
    );
    for k in 0..=5 {
        let v = y_max * k as f64 / 5.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 4.0,
            fmt_ms(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (ms)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    // Lines.
    const STEPS: usize = 300;
    for (i, se) in series.iter().enumerate() {
        if se.hist.is_empty() {
            continue;
        }
        let mut d = String::new();
        for k in 0..=STEPS {
            let x = x_max * k as f64 / STEPS as f64;
            let q = 1.0 - 10f64.powf(-x);
            let ms = se.hist.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if k == 0 { "M" } else { "L" },
                px(x),
                py(ms)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            d.trim_end(),
            se.color
        );
        let ly = TOP + 16.0 + i as f64 * 18.0;
        let lx = LEFT + 12.0;
        let p = |q: f64| fmt_ms(se.hist.value_at_quantile(q) as f64 / 1000.0);
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{} — p50 {} · p99 {} · p99.9 {} · max {} (n={})</text>"#,
            ly - 4.0,
            lx + 20.0,
            ly - 4.0,
            se.color,
            lx + 26.0,
            escape(se.name),
            p(0.5),
            p(0.99),
            p(0.999),
            fmt_ms(se.hist.max() as f64 / 1000.0),
            se.hist.len()
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1.0 {
        format!("{v:.2} ms")
    } else if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histo::{new_hist, record_us};

    #[test]
    fn renders_well_formed_svg() {
        let mut a = new_hist();
        for v in 1..10_000u64 {
            record_us(&mut a, 500 + v % 3000);
        }
        let empty = new_hist();
        let svg = render(
            "chat <tern-ws>",
            "1000 users",
            &[
                Series {
                    name: "delivery",
                    hist: &a,
                    color: "#1f77b4",
                },
                Series {
                    name: "send→ack",
                    hist: &empty,
                    color: "#ff7f0e",
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;tern-ws&gt;"));
        assert_eq!(svg.matches("<path").count(), 1);
        assert!(svg.contains("99.99%"));
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.011), 0.02);
    }
}
