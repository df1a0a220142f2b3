//! The picture of a merge report (docs/widen.md, "Report"): one heat map per contributor
//! (blocks × layer types, colored by the contributor's share of what the merge kept), bars of
//! each contributor's mean magnitude and direction divergences, and the keys left at the
//! backbone. Drawn with plotters on an RGB buffer; text needs a TrueType font from the system
//! (Debian's `fonts-dejavu-core`, which scripts/setup.sh installs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use tch::{Kind, Tensor};

use super::report::MergeReport;

/// Fonts looked for, in order (the first that exists is used).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    #[error(
        "WIDEN Report: no font to write the report's text with (looked for {}). Install Debian's \
         fonts-dejavu-core (scripts/setup.sh does) or another of these fonts",
        FONT_PATHS.join(", ")
    )]
    NoFont,
    #[error("WIDEN Report: the font {path} could not be read: {cause}")]
    BadFont { path: PathBuf, cause: String },
    #[error("WIDEN Report: drawing failed: {0}")]
    Draw(String),
    #[error("WIDEN Report: encoding the PNG failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// An RGB picture, 8 bits per channel, rows top to bottom.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Picture {
    /// The picture as a PNG file's bytes.
    pub fn png(&self) -> Result<Vec<u8>, DrawError> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.rgb)?;
        w.finish()?;
        Ok(out)
    }

    /// The picture as a ComfyUI IMAGE: `[1, H, W, 3]` fp32 in 0..1.
    pub fn image_tensor(&self) -> Result<Tensor, tch::TchError> {
        Tensor::f_from_slice(&self.rgb)?
            .f_reshape([1, self.height as i64, self.width as i64, 3])?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)
    }
}

/// Registers the system font with plotters once per process. plotters keeps its fonts in a
/// process-wide registry that takes `'static` bytes, so the font is read once and kept.
fn font() -> Result<(), DrawError> {
    static REGISTERED: OnceLock<Result<(), (Option<PathBuf>, String)>> = OnceLock::new();
    let r = REGISTERED.get_or_init(|| {
        let path = FONT_PATHS.iter().map(Path::new).find(|p| p.is_file()).ok_or((None, String::new()))?;
        let bytes = std::fs::read(path).map_err(|e| (Some(path.to_path_buf()), e.to_string()))?;
        plotters::style::register_font(FAMILY, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| (Some(path.to_path_buf()), "not a TrueType/OpenType font".to_string()))
    });
    match r {
        Ok(()) => Ok(()),
        Err((None, _)) => Err(DrawError::NoFont),
        Err((Some(path), cause)) => Err(DrawError::BadFont { path: path.clone(), cause: cause.clone() }),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> DrawError {
    DrawError::Draw(format!("{e:?}"))
}

/// The contributor's color (distinct hues, readable on white).
fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
    ];
    COLORS[i % COLORS.len()]
}

/// White blended toward `c` by `t` (0..1).
fn tint(c: RGBColor, t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |x: u8| (255.0 - (255.0 - x as f64) * t).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// Layout sizes (pixels).
const TITLE_H: i32 = 64;
const PANEL_W: i32 = 250;
const LABEL_W: i32 = 90;
const HEADER_H: i32 = 64;
const ROW_MIN: i32 = 14;
const BOTTOM_H: i32 = 270;

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// The end of `s` in at most `max` characters (a key's end names its layer).
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let cut: String = s.chars().skip(n - max.saturating_sub(1)).collect();
    format!("…{cut}")
}

/// Draws `report`.
pub fn draw(report: &MergeReport) -> Result<Picture, DrawError> {
    font()?;
    let n = report.meta.contributors.len().max(1);
    let blocks = report.blocks();
    let rows = blocks.len().max(1) as i32;
    let row_h = (600 / rows).clamp(ROW_MIN, 28);
    let heat_h = HEADER_H + rows * row_h + 16;
    let width = (LABEL_W + PANEL_W * n as i32 + 20).max(960);
    let height = TITLE_H + heat_h + BOTTOM_H;
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, rest) = root.split_vertically(TITLE_H);
        title(&top, report)?;
        let (heat, bottom) = rest.split_vertically(heat_h);
        heat_maps(&heat, report, &blocks, row_h)?;
        let (bars, text) = bottom.split_horizontally(width * 2 / 3);
        let (mag, dir) = bars.split_horizontally(width / 3);
        let totals = report.totals();
        divergence_bars(&mag, "magnitude divergence |mW − mB| (mean)", &totals.iter().map(|t| t.1).collect::<Vec<_>>())?;
        divergence_bars(&dir, "direction divergence 1 − cos (mean)", &totals.iter().map(|t| t.2).collect::<Vec<_>>())?;
        backbone_text(&text, report)?;
        root.present().map_err(err)?;
    }
    Ok(Picture { width: width as u32, height: height as u32, rgb })
}

fn title(area: &DrawingArea<BitMapBackend, Shift>, report: &MergeReport) -> Result<(), DrawError> {
    let big = (FAMILY, 22).into_font().color(&BLACK);
    let small = (FAMILY, 15).into_font().color(&RGBColor(80, 80, 80));
    area.draw(&Text::new(short(&report.meta.title, 110), (12, 8), big)).map_err(err)?;
    let moved = report.keys - report.at_backbone.len() - report.without_figures;
    let line = format!(
        "{} · {} keys merged: {} moved, {} left at the backbone{}",
        report.meta.arch,
        report.keys,
        moved,
        report.at_backbone.len(),
        if report.without_figures > 0 { format!(", {} without figures", report.without_figures) } else { String::new() }
    );
    area.draw(&Text::new(line, (12, 38), small)).map_err(err)?;
    Ok(())
}

fn heat_maps(area: &DrawingArea<BitMapBackend, Shift>, report: &MergeReport, blocks: &[&str], row_h: i32) -> Result<(), DrawError> {
    let layers = report.layers();
    let cols = layers.len().max(1) as i32;
    let cell_w = (PANEL_W - 16) / cols;
    let label = (FAMILY, 13).into_font().color(&BLACK);
    let centered = |size: u32, c: RGBColor| {
        (FAMILY, size).into_font().color(&c).pos(Pos::new(HPos::Center, VPos::Center))
    };
    for (bi, b) in blocks.iter().enumerate() {
        let y = HEADER_H + bi as i32 * row_h;
        area.draw(&Text::new(short(b, 11), (8, y + row_h / 2 - 7), label.clone())).map_err(err)?;
    }
    for (ci, name) in report.meta.contributors.iter().enumerate() {
        let x0 = LABEL_W + ci as i32 * PANEL_W;
        let c = color(ci);
        area.draw(&Rectangle::new([(x0, 4), (x0 + 14, 18)], c.filled())).map_err(err)?;
        area.draw(&Text::new(format!("#{} {}", ci + 1, short(name, 26)), (x0 + 20, 4), (FAMILY, 14).into_font().color(&BLACK))).map_err(err)?;
        area.draw(&Text::new("share of what the merge kept", (x0, 24), (FAMILY, 12).into_font().color(&RGBColor(90, 90, 90)))).map_err(err)?;
        for (li, l) in layers.iter().enumerate() {
            let x = x0 + li as i32 * cell_w;
            area.draw(&Text::new(short(l, 12), (x + cell_w / 2, HEADER_H - 10), centered(12, BLACK))).map_err(err)?;
        }
        for (bi, b) in blocks.iter().enumerate() {
            let y = HEADER_H + bi as i32 * row_h;
            for (li, l) in layers.iter().enumerate() {
                let x = x0 + li as i32 * cell_w;
                let cell = [(x, y), (x + cell_w - 2, y + row_h - 2)];
                let Some(g) = report.groups.iter().find(|g| g.block == *b && g.layer == *l) else {
                    // No key of this block has this layer type.
                    area.draw(&Rectangle::new(cell, RGBColor(246, 246, 246).filled())).map_err(err)?;
                    continue;
                };
                if g.at_backbone == g.keys {
                    // Nothing of this group moved: gray, "base".
                    area.draw(&Rectangle::new(cell, RGBColor(215, 215, 215).filled())).map_err(err)?;
                    if row_h >= 14 {
                        area.draw(&Text::new("base", (x + cell_w / 2, y + row_h / 2 - 1), centered(11, RGBColor(90, 90, 90)))).map_err(err)?;
                    }
                    continue;
                }
                let share = g.share[ci];
                area.draw(&Rectangle::new(cell, tint(c, share).filled())).map_err(err)?;
                area.draw(&Rectangle::new(cell, RGBColor(200, 200, 200).stroke_width(1))).map_err(err)?;
                if row_h >= 14 {
                    let ink = if share > 0.6 { WHITE } else { BLACK };
                    area.draw(&Text::new(format!("{:.0}%", share * 100.0), (x + cell_w / 2, y + row_h / 2 - 1), centered(11, ink))).map_err(err)?;
                }
            }
        }
    }
    Ok(())
}

fn divergence_bars(area: &DrawingArea<BitMapBackend, Shift>, caption: &str, values: &[Option<f64>]) -> Result<(), DrawError> {
    let n = values.len().max(1);
    let max = values.iter().flatten().copied().fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    // Enough decimals to tell the axis' ticks apart (about a tenth of the range each).
    let decimals = (-(top / 10.0).log10().floor()).max(0.0) as usize;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 14))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Each bar is labeled above itself, in its contributor's number.
        .x_labels(0)
        .y_label_formatter(&|y| format!("{:.*}", decimals, y))
        .label_style((FAMILY, 12))
        .draw()
        .map_err(err)?;
    for (i, v) in values.iter().enumerate() {
        let x = i as f64;
        match v {
            Some(v) => {
                chart.draw_series(std::iter::once(Rectangle::new([(x + 0.2, 0.0), (x + 0.8, *v)], color(i).filled()))).map_err(err)?;
                chart
                    .draw_series(std::iter::once(Text::new(format!("#{}", i + 1), (x + 0.5, *v), (FAMILY, 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)))))
                    .map_err(err)?;
            }
            None => {
                chart
                    .draw_series(std::iter::once(Text::new(format!("#{} n/a", i + 1), (x + 0.5, top * 0.05), (FAMILY, 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)))))
                    .map_err(err)?;
            }
        }
    }
    Ok(())
}

fn backbone_text(area: &DrawingArea<BitMapBackend, Shift>, report: &MergeReport) -> Result<(), DrawError> {
    let head = (FAMILY, 15).into_font().color(&BLACK);
    let body = (FAMILY, 12).into_font().color(&RGBColor(60, 60, 60));
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(format!("left at the backbone: {} of {} keys", report.at_backbone.len(), report.keys), (8, 12), head)).map_err(err)?;
    let lines = ((h as i32 - 60) / 16).max(1) as usize;
    let chars = (w as usize / 7).max(20);
    let mut y = 36;
    for (i, k) in report.at_backbone.iter().enumerate() {
        if i + 1 == lines && report.at_backbone.len() > lines {
            area.draw(&Text::new(format!("… and {} more", report.at_backbone.len() - i), (8, y), body.clone())).map_err(err)?;
            break;
        }
        area.draw(&Text::new(tail(k.strip_prefix("diffusion_model.").unwrap_or(k), chars), (8, y), body.clone())).map_err(err)?;
        y += 16;
    }
    if report.at_backbone.is_empty() {
        area.draw(&Text::new("none: every key moved", (8, y), body)).map_err(err)?;
    }
    Ok(())
}
