//! The incident chart: the SLI and the affected share around an incident, with its public
//! updates marked, drawn server-side as SVG from the values Herald recorded
//! (`GET /api/v1/incidents/{id}/samples`). No script, no chart library: the SVG is part of the
//! page, with a `<title>` and `<desc>` for screen readers.

use std::fmt::Write as _;

use serde_json::Value;

use super::view::ms;

const W: f64 = 640.0;
const PANEL_H: f64 = 90.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const GAP: f64 = 26.0;

/// One panel: (signal, label, points, whether it is the SLI).
type Panel<'a> = (&'a str, &'a str, Vec<(i64, f64)>, bool);

fn points(samples: &Value, signal: &str) -> Vec<(i64, f64)> {
    samples["signals"][signal]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["t"].as_i64()?, p["value"].as_f64()?)))
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart as an inline SVG element, or an empty string when nothing was recorded.
pub fn render(samples: &Value, incident: &Value) -> String {
    let panels: Vec<Panel<'_>> = [("sli", "SLI", true), ("affected_ratio", "Affected customers", false)]
        .into_iter()
        .map(|(sig, label, is_sli)| (sig, label, points(samples, sig), is_sli))
        .filter(|(_, _, p, _)| !p.is_empty())
        .collect();
    if panels.is_empty() {
        return String::new();
    }
    let objective = points(samples, "objective").last().map(|p| p.1);
    let updates: Vec<i64> = incident["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "public_update")
        .filter_map(|e| ms(&e["at"]))
        .collect();
    let opened = ms(&incident["opened_at"]);
    let resolved = ms(&incident["resolved_at"]);
    let all_t = panels.iter().flat_map(|p| p.2.iter().map(|x| x.0)).chain(updates.iter().copied()).chain(opened).chain(resolved);
    let (t0, t1) = all_t.fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / span * (W - LEFT - RIGHT);
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Signals around the incident</title><desc id="chart-desc">{}</desc>"#,
        esc(&describe(&panels, updates.len()))
    );
    for (i, (_, label, pts, is_sli)) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + GAP);
        let mut lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if *is_sli {
            if let Some(o) = objective {
                lo = lo.min(o);
                hi = hi.max(o);
            }
        } else {
            lo = 0.0;
        }
        if hi - lo < 1e-9 {
            hi = lo + 0.01;
        }
        let pad = (hi - lo) * 0.08;
        let (lo, hi) = if *is_sli { ((lo - pad).max(0.0), (hi + pad).min(1.0)) } else { (lo, (hi + pad).min(1.0).max(hi)) };
        let y = |v: f64| top + PANEL_H - (v - lo) / (hi - lo) * PANEL_H;
        let fmt = |v: f64| if *is_sli { format!("{:.2}%", v * 100.0) } else { format!("{:.0}%", v * 100.0) };
        let _ = write!(
            svg,
            r#"<text class="label" x="{LEFT}" y="{:.1}">{}</text><rect class="panel" x="{LEFT}" y="{top:.1}" width="{:.1}" height="{PANEL_H}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            top - 2.0,
            esc(label),
            W - LEFT - RIGHT,
            LEFT - 4.0,
            top + 10.0,
            fmt(hi),
            LEFT - 4.0,
            top + PANEL_H,
            fmt(lo)
        );
        if let (true, Some(o)) = (*is_sli, objective) {
            let _ = write!(svg, r#"<line class="objective" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"><title>objective {}</title></line>"#, W - RIGHT, y(o), y(o), fmt(o));
        }
        let path: Vec<String> = pts.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ = write!(svg, r#"<polyline class="series s{i}" points="{}"/>"#, path.join(" "));
        for t in &updates {
            let _ = write!(svg, r#"<line class="update" x1="{:.1}" x2="{:.1}" y1="{top:.1}" y2="{:.1}"><title>public update</title></line>"#, x(*t), x(*t), top + PANEL_H);
        }
        for (t, cls) in [(opened, "opened"), (resolved, "resolved")] {
            if let Some(t) = t {
                let _ = write!(svg, r#"<line class="{cls}" x1="{:.1}" x2="{:.1}" y1="{top:.1}" y2="{:.1}"><title>{cls}</title></line>"#, x(t), x(t), top + PANEL_H);
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

fn describe(panels: &[Panel<'_>], updates: usize) -> String {
    let mut parts: Vec<String> = panels
        .iter()
        .map(|(_, label, p, _)| {
            let lo = p.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
            let hi = p.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
            format!("{label}: {} values from {:.2}% to {:.2}%, last {:.2}%", p.len(), lo * 100.0, hi * 100.0, p.last().map_or(0.0, |x| x.1) * 100.0)
        })
        .collect();
    parts.push(format!("{updates} public update(s) marked"));
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn draws_both_panels_and_marks_public_updates() {
        let samples = json!({"signals": {
            "sli": [{"t": 0, "value": 0.999}, {"t": 60_000, "value": 0.9}, {"t": 120_000, "value": 0.95}],
            "affected_ratio": [{"t": 0, "value": 0.0}, {"t": 60_000, "value": 0.12}],
            "objective": [{"t": 0, "value": 0.999}]
        }});
        let inc = json!({"opened_at": "1970-01-01T00:00:30Z", "events": [{"type": "public_update", "at": "1970-01-01T00:01:30Z"}, {"type": "ack", "at": "1970-01-01T00:01:00Z"}]});
        let svg = render(&samples, &inc);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches(r#"class="update""#).count(), 2, "one marker per panel for the one public update");
        assert_eq!(svg.matches(r#"class="objective""#).count(), 1);
        assert!(svg.contains("SLI: 3 values from 90.00% to 99.90%, last 95.00%"), "{svg}");
        // The x axis spans the samples: the first point is at the left edge.
        assert!(svg.contains(&format!(r#"points="{LEFT:.1},"#)), "{svg}");
    }

    #[test]
    fn nothing_recorded_draws_nothing() {
        assert_eq!(render(&json!({"signals": {}}), &json!({})), "");
    }
}
