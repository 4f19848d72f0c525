//! Image decoding and FastVLM's preprocessing: RGB, pad to square with black, Pillow bicubic
//! resize to the tower's resolution, centre crop, /255, planar.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::config::AspectRatio;
use crate::jpeg::{self, Decoded, JpegError};
use crate::resize::resize_bicubic_rgb8_window;

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
    #[error("image is {width}×{height} pixels; at most {limit} pixels per side are accepted")]
    TooLong { width: u32, height: u32, limit: u32 },
    #[error(
        "image is {width}×{height} pixels; padded to a square it would take {bytes} bytes, at most {limit} are accepted"
    )]
    SquareTooLarge {
        width: u32,
        height: u32,
        bytes: u64,
        limit: u64,
    },
    #[error("image is empty ({width}×{height})")]
    Empty { width: u32, height: u32 },
    #[error("image refused: {0}")]
    Refused(String),
}

/// Largest image [`decode`] accepts (decoded pixels): 64 megapixels, the square of
/// [`MAX_SIDE`].
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Longest side [`decode`] accepts.
pub const MAX_SIDE: u32 = 8192;

/// Bounds on an image, checked from its header before anything is allocated for its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Most pixels, width × height.
    pub max_pixels: u64,
    /// Longest side, pixels.
    pub max_side: u32,
    /// Most bytes of the RGB square the image is padded to (`side² × 3`), the largest buffer
    /// preprocessing allocates.
    pub max_square_bytes: u64,
}

impl Default for ImageLimits {
    /// [`MAX_PIXELS`], [`MAX_SIDE`], and the square of that side (192 MiB).
    fn default() -> Self {
        Self::new(MAX_PIXELS, MAX_SIDE)
    }
}

impl ImageLimits {
    /// `max_pixels` and `max_side`, with the padded square bounded by `max_side`'s.
    pub fn new(max_pixels: u64, max_side: u32) -> Self {
        Self {
            max_pixels,
            max_side,
            max_square_bytes: square_bytes(max_side, max_side),
        }
    }

    /// Whether a `width × height` image is within the limits.
    pub fn check(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Empty { width, height });
        }
        if width.max(height) > self.max_side {
            return Err(ImageError::TooLong {
                width,
                height,
                limit: self.max_side,
            });
        }
        if width as u64 * height as u64 > self.max_pixels {
            return Err(ImageError::TooLarge {
                width,
                height,
                limit: self.max_pixels,
            });
        }
        let bytes = square_bytes(width, height);
        if bytes > self.max_square_bytes {
            return Err(ImageError::SquareTooLarge {
                width,
                height,
                bytes,
                limit: self.max_square_bytes,
            });
        }
        Ok(())
    }

    /// What the `image` crate's decoders may allocate: the largest image at the widest sample
    /// type they produce (four f32 channels), and 16 MiB for their working buffers.
    fn alloc_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(16).saturating_add(16 << 20)
    }
}

/// Bytes of the RGB square a `width × height` image is padded to.
fn square_bytes(width: u32, height: u32) -> u64 {
    let side = width.max(height) as u64;
    side * side * 3
}

/// Interleaved 8-bit RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes an image file within the default [`ImageLimits`], applying its EXIF orientation.
pub fn load(path: &Path) -> Result<Rgb8, ImageError> {
    load_with(path, &ImageLimits::default())
}

/// Decodes an image file within `limits`, applying its EXIF orientation.
pub fn load_with(path: &Path, limits: &ImageLimits) -> Result<Rgb8, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    decode_with(&bytes, limits).map_err(|e| match e {
        ImageError::Decode { reason, .. } => ImageError::Decode {
            path: Some(path.display().to_string()),
            reason,
        },
        other => other,
    })
}

/// Decodes encoded image bytes (PNG, JPEG, WebP, GIF, BMP, TIFF, …) within the default
/// [`ImageLimits`], applying EXIF orientation.
pub fn decode(bytes: &[u8]) -> Result<Rgb8, ImageError> {
    decode_with(bytes, &ImageLimits::default())
}

/// The one way images come in: decodes encoded bytes (PNG, JPEG, WebP, GIF, BMP, TIFF, …),
/// applying EXIF orientation, and refuses an image outside `limits` from its header, before
/// anything is allocated for its pixels.
///
/// JPEGs go through this crate's decoder (Pillow's pixels), which also bounds scans and
/// entropy-decoding work; the JPEGs it leaves, and the other formats, through the `image`
/// crate's decoders under the same bounds (its `Limits`: sides and allocation).
pub fn decode_with(bytes: &[u8], limits: &ImageLimits) -> Result<Rgb8, ImageError> {
    let bad = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => ImageError::Refused(l.to_string()),
        other => ImageError::Decode {
            path: None,
            reason: other.to_string(),
        },
    };
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode {
            path: None,
            reason: e.to_string(),
        })?;
    // The header is read under the allocation limit alone, so that a size over the limits
    // gets this crate's message, which names the limit; the decoder then works under all of
    // them.
    let mut stock = image::Limits::default();
    stock.max_alloc = Some(limits.alloc_bytes());
    reader.limits(stock.clone());
    let reader_format = reader.format();
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    limits.check(w, h)?;
    stock.max_image_width = Some(limits.max_side);
    stock.max_image_height = Some(limits.max_side);
    decoder.set_limits(stock).map_err(bad)?;
    if decoder.total_bytes() > limits.alloc_bytes() {
        return Err(ImageError::Refused(format!(
            "{w}×{h} pixels of {:?} need {} bytes",
            decoder.color_type(),
            decoder.total_bytes()
        )));
    }
    let orientation = decoder.orientation().ok();
    // JPEGs through our libjpeg-exact decoder (Pillow's pixels); what it leaves, or cannot
    // read, through the `image` crate's. A JPEG it refuses for its size or work goes nowhere.
    let exact = match reader_format {
        Some(ImageFormat::Jpeg) => match jpeg::decode(bytes, limits.max_pixels, limits.max_side) {
            Ok(Decoded::Rgb {
                width,
                height,
                data,
            }) => RgbImage::from_raw(width as u32, height as u32, data).map(DynamicImage::from),
            Ok(Decoded::Unsupported) | Err(JpegError::Corrupt(_)) => None,
            Err(e @ JpegError::Limit(_)) => return Err(ImageError::Refused(e.to_string())),
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
    let square = prepare(img, size, aspect);
    let mut planes = vec![0f32; 3 * size * size];
    for (p, rgb) in square.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planes[c * size * size + p] = (rgb[c] as f64 * (1.0 / 255.0)) as f32;
        }
    }
    planes
}

/// The `size × size` RGB image [`preprocess`] scales to [0, 1]: padded to a square (or not,
/// for [`AspectRatio::CenterCrop`]), shortest edge resized to `size` with Pillow's bicubic, the
/// centre cropped (only the crop is computed). Preprocessing its result again changes nothing,
/// so a server can shrink an image this way when it arrives and hold 3 × `size`² bytes instead
/// of the whole picture while the request waits.
pub fn prepare(img: &Rgb8, size: usize, aspect: AspectRatio) -> Rgb8 {
    let padded;
    let img = match aspect {
        AspectRatio::Pad if img.width != img.height => {
            padded = expand_to_square(img);
            &padded
        }
        _ => img,
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
    let (x0, y0) = ((rw - size) / 2, (rh - size) / 2);
    Rgb8 {
        width: size,
        height: size,
        data: resize_bicubic_rgb8_window(&img.data, w, h, rw, rh, (x0, y0, size, size)),
    }
}
