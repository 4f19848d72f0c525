//! Image decoding and FastVLM's preprocessing: RGB, pad to square with black, Pillow bicubic
//! resize to the tower's resolution, centre crop, /255, planar.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::config::AspectRatio;
use crate::jpeg::{self, Decoded};
use crate::resize::resize_bicubic_rgb8;

/// An image that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image `{path}`: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot decode image{}: {reason}", .path.as_ref().map(|p| format!(" `{p}`")).unwrap_or_default())]
    Decode {
        path: Option<String>,
        reason: String,
    },
    #[error("image is {width}×{height} pixels; at most {limit} pixels are accepted")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("image is empty ({width}×{height})")]
    Empty { width: u32, height: u32 },
}

/// Largest image accepted (decoded pixels): 64 megapixels.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Interleaved 8-bit RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes an image file, applying its EXIF orientation.
pub fn load(path: &Path) -> Result<Rgb8, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    decode(&bytes).map_err(|e| match e {
        ImageError::Decode { reason, .. } => ImageError::Decode {
            path: Some(path.display().to_string()),
            reason,
        },
        other => other,
    })
}

/// Decodes encoded image bytes (PNG, JPEG, WebP, GIF, BMP, TIFF, …), applying EXIF orientation.
pub fn decode(bytes: &[u8]) -> Result<Rgb8, ImageError> {
    decode_limited(bytes, MAX_PIXELS)
}

/// [`decode`], refusing images above `max_pixels` (width × height) before decoding them: a
/// server's guard against decompression bombs.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<Rgb8, ImageError> {
    let bad = |e: image::ImageError| ImageError::Decode {
        path: None,
        reason: e.to_string(),
    };
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode {
            path: None,
            reason: e.to_string(),
        })?;
    let reader_format = reader.format();
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    if (w as u64) * (h as u64) > max_pixels {
        return Err(ImageError::TooLarge {
            width: w,
            height: h,
            limit: max_pixels,
        });
    }
    let orientation = decoder.orientation().ok();
    // JPEGs through our libjpeg-exact decoder (Pillow's pixels); what it leaves, or cannot
    // read, through the `image` crate's.
    let exact = match reader_format {
        Some(ImageFormat::Jpeg) => match jpeg::decode(bytes, max_pixels) {
            Ok(Decoded::Rgb {
                width,
                height,
                data,
            }) => RgbImage::from_raw(width as u32, height as u32, data).map(DynamicImage::from),
            Ok(Decoded::Unsupported) | Err(_) => None,
        },
        _ => None,
    };
    let mut img = match exact {
        Some(img) => img,
        None => DynamicImage::from_decoder(decoder).map_err(bad)?,
    };
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::Empty {
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(to_rgb8(img))
}

/// RGB the way Pillow's `convert("RGB")` makes it: alpha is dropped (not composited), grey is
/// replicated, 16-bit colour keeps its high byte, 16-bit grey is clipped to 255.
fn to_rgb8(img: DynamicImage) -> Rgb8 {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(i) => i.into_raw(),
        DynamicImage::ImageLuma16(i) => i
            .into_raw()
            .into_iter()
            .flat_map(|v| [v.min(255) as u8; 3])
            .collect(),
        DynamicImage::ImageLumaA16(i) => i
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0].min(255) as u8; 3])
            .collect(),
        DynamicImage::ImageRgb16(i) => i.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(i) => i
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        other => other.to_rgb8().into_raw(),
    };
    Rgb8 {
        width,
        height,
        data,
    }
}

/// Pads to a square of side max(w, h) with black, the image centred (`expand2square`).
pub fn expand_to_square(img: &Rgb8) -> Rgb8 {
    let side = img.width.max(img.height);
    if img.width == img.height {
        return img.clone();
    }
    let (ox, oy) = ((side - img.width) / 2, (side - img.height) / 2);
    let mut data = vec![0u8; side * side * 3];
    for y in 0..img.height {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        let start = ((y + oy) * side + ox) * 3;
        data[start..start + img.width * 3].copy_from_slice(src);
    }
    Rgb8 {
        width: side,
        height: side,
        data,
    }
}

/// The reference's pixel preprocessing: `[3, size, size]` floats in [0, 1], RGB planes.
pub fn preprocess(img: &Rgb8, size: usize, aspect: AspectRatio) -> Vec<f32> {
    let img = match aspect {
        AspectRatio::Pad => expand_to_square(img),
        AspectRatio::CenterCrop => img.clone(),
    };
    // Shortest edge to `size`, the other edge as CLIP's processor rounds it, then a centre crop.
    let (w, h) = (img.width, img.height);
    let (rw, rh) = if w <= h {
        (
            size,
            ((size as f64 * h as f64 / w as f64) as usize).max(size),
        )
    } else {
        (
            ((size as f64 * w as f64 / h as f64) as usize).max(size),
            size,
        )
    };
    let resized = resize_bicubic_rgb8(&img.data, w, h, rw, rh);
    let (x0, y0) = ((rw - size) / 2, (rh - size) / 2);
    let mut planes = vec![0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let p = ((y + y0) * rw + x + x0) * 3;
            for c in 0..3 {
                planes[c * size * size + y * size + x] =
                    (resized[p + c] as f64 * (1.0 / 255.0)) as f32;
            }
        }
    }
    planes
}
