//! The pixel work behind `/view` (channels, previews) and `/upload/mask` (alpha transfer), on
//! the `image` crate, plus the PNG text chunks (ComfyUI's embedded workflow) a mask keeps.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageReader, RgbaImage};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{name} is not an image this server can read (PNG, JPEG or WebP): {source}")]
    Decode { name: String, source: image::ImageError },
    #[error("cannot encode the image: {0}")]
    Encode(String),
    #[error("the mask is {mask:?} pixels but the image it applies to is {image:?}: upload a mask of the image's size")]
    SizeMismatch { mask: (u32, u32), image: (u32, u32) },
}

/// An encoded image and its content type.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

fn open(path: &Path) -> Result<DynamicImage, ImageError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let decode = |source| ImageError::Decode { name: name.clone(), source };
    ImageReader::open(path).map_err(|e| decode(e.into()))?.with_guessed_format().map_err(|e| decode(e.into()))?.decode().map_err(decode)
}

fn png(img: &DynamicImage) -> Result<Encoded, ImageError> {
    let mut bytes = Vec::new();
    img.write_with_encoder(PngEncoder::new(&mut bytes)).map_err(|e| ImageError::Encode(e.to_string()))?;
    Ok(Encoded { bytes, content_type: "image/png" })
}

/// `channel=rgb`: the colour without alpha, as PNG.
pub fn rgb(path: &Path) -> Result<Encoded, ImageError> {
    png(&DynamicImage::ImageRgb8(open(path)?.to_rgb8()))
}

/// `channel=a`: the alpha channel as a black image with that alpha (opaque when the image has
/// none), as PNG.
pub fn alpha(path: &Path) -> Result<Encoded, ImageError> {
    let img = open(path)?;
    let has_alpha = img.color().has_alpha();
    let src = img.to_rgba8();
    let out = RgbaImage::from_fn(src.width(), src.height(), |x, y| image::Rgba([0, 0, 0, if has_alpha { src.get_pixel(x, y)[3] } else { 255 }]));
    png(&DynamicImage::ImageRgba8(out))
}

/// `preview=webp;90` / `preview=jpeg;85`: re-encoded for a thumbnail. As ComfyUI does, a
/// format other than webp or jpeg, or a channel with alpha, gives WebP, and JPEG or
/// `channel=rgb` drop alpha. WebP comes out lossless (the `image` crate's WebP encoder has no
/// lossy mode), so its quality number is ignored.
pub fn preview(path: &Path, spec: &str, channel: &str) -> Result<Encoded, ImageError> {
    let parts: Vec<&str> = spec.split(';').collect();
    let jpeg = parts[0] == "jpeg" && !channel.contains('a');
    let quality = parts.last().and_then(|q| q.parse::<u8>().ok()).unwrap_or(90).clamp(1, 100);
    let img = open(path)?;
    let img = if jpeg || channel == "rgb" { DynamicImage::ImageRgb8(img.to_rgb8()) } else { DynamicImage::ImageRgba8(img.to_rgba8()) };
    let mut bytes = Vec::new();
    let enc = |e: image::ImageError| ImageError::Encode(e.to_string());
    if jpeg {
        img.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, quality)).map_err(enc)?;
        Ok(Encoded { bytes, content_type: "image/jpeg" })
    } else {
        img.write_with_encoder(WebPEncoder::new_lossless(&mut bytes)).map_err(enc)?;
        Ok(Encoded { bytes, content_type: "image/webp" })
    }
}

/// The text chunks of a PNG (keyword, text), in file order by kind; none for other formats.
fn png_text(path: &Path) -> Vec<(String, String)> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let Ok(reader) = png::Decoder::new(std::io::BufReader::new(file)).read_info() else { return Vec::new() };
    let info = reader.info();
    let mut out: Vec<(String, String)> = info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    out.extend(info.compressed_latin1_text.iter().filter_map(|t| Some((t.keyword.clone(), t.get_text().ok()?))));
    out.extend(info.utf8_text.iter().filter_map(|t| Some((t.keyword.clone(), t.get_text().ok()?))));
    out
}

/// `/upload/mask`: the original image with the mask's alpha, as PNG, keeping the original's
/// text chunks (the workflow ComfyUI embeds in its outputs).
pub fn apply_mask(original: &Path, mask: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut img = open(original)?.to_rgba8();
    let mask = image::load_from_memory(mask).map_err(|source| ImageError::Decode { name: "the uploaded mask".into(), source })?.to_rgba8();
    if mask.dimensions() != img.dimensions() {
        return Err(ImageError::SizeMismatch { mask: mask.dimensions(), image: img.dimensions() });
    }
    for (p, m) in img.pixels_mut().zip(mask.pixels()) {
        p[3] = m[3];
    }
    let enc = |e: png::EncodingError| ImageError::Encode(e.to_string());
    let mut out = Cursor::new(Vec::new());
    {
        let mut encoder = png::Encoder::new(&mut out, img.width(), img.height());
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, text) in png_text(original) {
            // tEXt holds Latin-1 only; anything else goes in an iTXt chunk (as PIL does).
            if text.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(key, text).map_err(enc)?;
            } else {
                encoder.add_itxt_chunk(key, text).map_err(enc)?;
            }
        }
        let mut writer = encoder.write_header().map_err(enc)?;
        writer.write_image_data(img.as_raw()).map_err(enc)?;
        writer.finish().map_err(enc)?;
    }
    Ok(out.into_inner())
}
