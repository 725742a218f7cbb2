//! The plot `sluice-bench --plot` writes: tokens/s per second of the run against the TPM limit,
//! as a self-contained SVG (no plotting dependency; any browser or `rsvg-convert` renders it).

use std::fmt::Write as _;

use super::figures::{Second, steady_window};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// A "nice" axis maximum (1, 2 or 5 × 10ⁿ) at or above `value`, and its tick step.
fn nice_axis(value: f64) -> (f64, f64) {
    let value = value.max(1.0);
    let magnitude = 10f64.powf(value.log10().floor());
    for factor in [1.0, 2.0, 5.0, 10.0] {
        if magnitude * factor >= value {
            let max = magnitude * factor;
            return (max, max / 5.0);
        }
    }
    (magnitude * 10.0, magnitude * 2.0)
}

/// Compact tick labels: 1.5M, 250k, 40.
fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if value >= 1e3 {
        format!("{}k", trim(value / 1e3))
    } else {
        trim(value)
    }
}

fn trim(value: f64) -> String {
    let s = format!("{value:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Tokens/s over the run (`series`) with the limit (`tpm_limit / 60` tokens/s) as a dashed line
/// and the steady state shaded. `title` is shown above the plot.
pub fn tokens_svg(series: &[Second], tpm_limit: Option<u64>, title: &str) -> String {
    let limit_per_sec = tpm_limit.map(|t| t as f64 / 60.0);
    let peak = series.iter().map(|s| s.tokens).max().unwrap_or(0) as f64;
    let (y_max, y_step) = nice_axis(peak.max(limit_per_sec.unwrap_or(0.0)) * 1.05);
    let seconds = series.len().max(2) - 1;
    let (x_max, x_step) = nice_axis(seconds as f64);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |s: f64| LEFT + s / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let window = steady_window(series.len());
    if !window.is_empty() {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#eef4ea"/>"##,
            x(window.start as f64),
            x((window.end - 1) as f64) - x(window.start as f64),
        );
    }
    // Grid lines and tick labels.
    let mut tick = 0.0;
    while tick <= y_max + y_step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#dddddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(tick),
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            short(tick)
        );
        tick += y_step;
    }
    let mut tick = 0.0;
    while tick <= x_max + x_step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#888888"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            x(tick),
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 19.0,
            short(tick)
        );
        tick += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{0} H{1}" fill="none" stroke="#333333"/>"##,
        TOP + plot_h,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the first job</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">tokens/s admitted by the emulator</text>"#,
        TOP + plot_h / 2.0
    );
    if let Some(limit) = limit_per_sec {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="8 5"/><text x="{2}" y="{3:.1}" text-anchor="end" fill="#c0392b">TPM limit ({4} tokens/s)</text>"##,
            y(limit),
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            y(limit) - 6.0,
            short(limit)
        );
    }
    if !series.is_empty() {
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{:.1},{:.1}", x(i as f64), y(s.tokens as f64)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" fill="#5a7d4a">shaded: steady state (first and last 10% left out)</text>"##,
        LEFT + 8.0,
        TOP + 14.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(tokens: &[u64]) -> Vec<Second> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| Second {
                second: i as u64,
                tokens: t,
                ..Second::default()
            })
            .collect()
    }

    /// Checks that tags are balanced and properly nested (self-closing tags aside) and that the
    /// XML has one root: enough to catch a broken writer without an XML parser dependency.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        let mut roots = 0;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.trim()), "closing {name}");
            } else if !tag.ends_with('/') {
                if stack.is_empty() {
                    roots += 1;
                }
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            } else if stack.is_empty() {
                roots += 1;
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert_eq!(roots, 1, "one root element");
        // Text outside tags must not hold a raw '&' that is not an entity.
        for (i, _) in svg.match_indices('&') {
            let entity = &svg[i..(i + 6).min(svg.len())];
            assert!(
                entity.starts_with("&amp;")
                    || entity.starts_with("&lt;")
                    || entity.starts_with("&gt;"),
                "raw & at {i}"
            );
        }
    }

    #[test]
    fn writes_a_well_formed_plot_with_the_series_and_the_limit() {
        let svg = tokens_svg(
            &series(&[0, 5_000, 16_000, 16_500, 16_600, 12_000, 0]),
            Some(1_000_000),
            "4 workers <1M TPM> & 100 ms",
        );
        assert_well_formed(&svg);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("stroke-dasharray"), "dashed limit line");
        assert!(svg.contains("TPM limit (16.67k tokens/s)"));
        assert!(svg.contains("&lt;1M TPM&gt; &amp; 100 ms"));
        let polyline = svg
            .lines()
            .find(|l| l.starts_with("<polyline"))
            .expect("a polyline");
        assert_eq!(polyline.matches(',').count(), 7, "one point per second");
    }

    #[test]
    fn plots_without_a_limit_and_with_an_empty_series() {
        assert_well_formed(&tokens_svg(&series(&[3, 4]), None, "no limit"));
        let empty = tokens_svg(&[], Some(60), "empty");
        assert_well_formed(&empty);
        assert!(!empty.contains("<polyline"));
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_axis(17_500.0), (20_000.0, 4_000.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(301.0), (500.0, 100.0));
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(250_000.0), "250k");
        assert_eq!(short(40.0), "40");
    }
}
