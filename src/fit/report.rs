//! The report ops teams read after a fit: per response type, held-out pair accuracy, top-1
//! accuracy, the loss curve and score histograms per class (as in the RBR paper's
//! figures), as PNG files and one HTML page, plus `report.json`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::TypeFit;

/// Why the fit report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be created or written, or a chart could not be drawn.
    #[error("cannot write the report in {path}: {message}")]
    Io {
        /// The file or directory concerned.
        path: String,
        /// The underlying error.
        message: String,
    },
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // Embedded, so rendering needs no system fonts.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(127, 127, 127),
];

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// Train and held-out loss against iterations.
fn loss_png(fit: &TypeFit, path: &Path) -> Result<(), ReportError> {
    let root = BitMapBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let max_x = fit.loss_curve.last().map_or(1, |p| p.0) as f64;
    let max_y =
        fit.loss_curve.iter().flat_map(|(_, a, b)| [Some(*a), *b]).flatten().fold(0.0_f64, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: hinge loss", fit.response_type), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().x_desc("iteration").y_desc("loss").draw().map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(LineSeries::new(
            fit.loss_curve.iter().map(|(i, t, _)| (*i as f64, *t)),
            COLOURS[0].stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], COLOURS[0].stroke_width(2)));
    if fit.loss_curve.iter().any(|(_, _, h)| h.is_some()) {
        chart
            .draw_series(LineSeries::new(
                fit.loss_curve.iter().filter_map(|(i, _, h)| h.map(|h| (*i as f64, h))),
                COLOURS[2].stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label("held out")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], COLOURS[2].stroke_width(2)));
    }
    finish_png(&mut chart, &root, path)
}

/// Draws the chart's legend and writes the PNG.
fn finish_png<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    root: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    path: &Path,
) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Histogram of scores per class (outlines, so the classes can be told apart).
fn histogram_png(fit: &TypeFit, path: &Path) -> Result<(), ReportError> {
    let root = BitMapBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (lo, hi) =
        fit.scores.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, s, _)| (lo.min(*s), hi.max(*s)));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (-1.0, 1.0) };
    let bins = 30usize;
    let width = (hi - lo) / bins as f64;
    let counts: Vec<(String, Vec<usize>)> = fit
        .class_names
        .iter()
        .map(|class| {
            let mut c = vec![0usize; bins];
            for (_, s, _) in fit.scores.iter().filter(|(k, _, _)| k == class) {
                c[(((s - lo) / width) as usize).min(bins - 1)] += 1;
            }
            (class.clone(), c)
        })
        .filter(|(_, c)| c.iter().any(|&n| n > 0))
        .collect();
    let top = counts.iter().flat_map(|(_, c)| c.iter().copied()).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: scores by class", fit.response_type), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(lo..hi, 0.0..top)
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().x_desc("score").y_desc("completions").draw().map_err(|e| plot_err(path, e))?;
    for (k, (class, c)) in counts.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let steps: Vec<(f64, f64)> = c
            .iter()
            .enumerate()
            .flat_map(|(b, &n)| {
                let x0 = lo + b as f64 * width;
                [(x0, n as f64), (x0 + width, n as f64)]
            })
            .collect();
        chart
            .draw_series(LineSeries::new(steps, colour.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(class.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    finish_png(&mut chart, &root, path)
}

/// A fraction as a percentage with one decimal, `-` when there is none.
pub fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.1}%", 100.0 * v))
}

/// Writes PNGs, `index.html` and `report.json` into `dir`.
pub fn write(dir: &Path, fits: &[TypeFit], inputs: &[String], options: &super::FitOptions) -> Result<(), ReportError> {
    register_font();
    let io = |e: std::io::Error| ReportError::Io { path: dir.display().to_string(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rulegate fit report</title>\
         <style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}</style></head><body>\
         <h1>rulegate fit report</h1><p>Data: {}. Hinge loss with margins (default {:.2}), L2 {:.4}, Adam lr {:.4}, {} iterations, {:.0}% of prompts held out (seed {}).</p>",
        inputs.iter().map(|s| html_escape(s)).collect::<Vec<_>>().join(", "),
        options.default_margin,
        options.l2,
        options.learning_rate,
        options.iterations,
        options.holdout * 100.0,
        options.seed
    );
    html.push_str("<table><tr><th>response type</th><th>examples</th><th>prompts (held out)</th><th>train pairs</th><th>held-out pairs</th><th>held-out pair accuracy</th><th>top-1 accuracy (prompts)</th></tr>");
    for f in fits {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td></tr>",
            html_escape(&f.response_type),
            f.examples,
            f.prompts,
            f.heldout_prompts,
            f.train_pairs,
            f.heldout_pairs,
            pct(f.heldout_pair_accuracy),
            pct(f.top1_accuracy),
            f.top1_prompts
        );
    }
    html.push_str("</table>");
    for f in fits {
        let loss = format!("loss-{}.png", f.response_type);
        let hist = format!("scores-{}.png", f.response_type);
        loss_png(f, &dir.join(&loss))?;
        histogram_png(f, &dir.join(&hist))?;
        let _ = write!(html, "<h2>{}</h2>", html_escape(&f.response_type));
        if f.cross_prompt_pairs > 0 {
            let _ = write!(
                html,
                "<p>{} of the pairs compare completions of <em>different</em> prompts (RBR gold rows carry one completion per prompt).</p>",
                f.cross_prompt_pairs
            );
        }
        let _ = write!(
            html,
            "<p><img src=\"{loss}\" alt=\"loss\"> <img src=\"{hist}\" alt=\"scores\"></p><table><tr><th>feature</th><th>weight</th></tr>"
        );
        for (name, w) in f.feature_names.iter().zip(&f.weights) {
            let _ = write!(html, "<tr><td>{}</td><td>{w:.4}</td></tr>", html_escape(name));
        }
        html.push_str("</table>");
    }
    html.push_str("</body></html>\n");
    std::fs::write(dir.join("index.html"), html).map_err(io)?;
    let json = serde_json::to_string_pretty(&serde_json::json!({"inputs": inputs, "response_types": fits}))
        .unwrap_or_default();
    std::fs::write(dir.join("report.json"), json).map_err(io)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
