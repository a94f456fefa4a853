//! Image dimension probing and thumbnails, with decompression-bomb protection.
//!
//! Everything here is synchronous and CPU-bound: call it from a blocking thread
//! (`tokio::task::spawn_blocking`).

use std::fmt;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageError, ImageReader};

use crate::error::MediaError;

/// Bytes the decoders may allocate while only reading headers.
const HEADER_ALLOC_LIMIT: u64 = 64 * 1024 * 1024;
/// Worst case bytes per decoded pixel (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;
/// Extra decoder working memory allowed on top of the output buffer.
const DECODE_ALLOC_SLACK: u64 = 64 * 1024 * 1024;
const JPEG_QUALITY: u8 = 80;
const RESIZE_FILTER: FilterType = FilterType::CatmullRom;

/// Size limits checked before an image is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest `width * height`.
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_dimension: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 40_000_000,
            max_dimension: 16_384,
        }
    }
}

impl ImageLimits {
    fn check(&self, width: u32, height: u32) -> Result<(), MediaError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels || width > self.max_dimension || height > self.max_dimension {
            return Err(MediaError::TooManyPixels {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    fn decode_limits(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_dimension);
        limits.max_image_height = Some(self.max_dimension);
        limits.max_alloc = Some(
            self.max_pixels
                .saturating_mul(MAX_BYTES_PER_PIXEL)
                .saturating_add(DECODE_ALLOC_SLACK),
        );
        limits
    }
}

/// A thumbnail size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThumbSize {
    /// 96x96, centre-cropped square.
    Small,
    /// Fits within 320x320.
    Medium,
    /// Fits within 1280x1280.
    Large,
}

impl ThumbSize {
    pub const ALL: [ThumbSize; 3] = [ThumbSize::Small, ThumbSize::Medium, ThumbSize::Large];

    /// "s", "m" or "l".
    pub fn as_str(self) -> &'static str {
        match self {
            ThumbSize::Small => "s",
            ThumbSize::Medium => "m",
            ThumbSize::Large => "l",
        }
    }

    /// Parses "s", "m" or "l".
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "s" => Some(ThumbSize::Small),
            "m" => Some(ThumbSize::Medium),
            "l" => Some(ThumbSize::Large),
            _ => None,
        }
    }

    /// The bounding box side in pixels.
    pub fn max_side(self) -> u32 {
        match self {
            ThumbSize::Small => 96,
            ThumbSize::Medium => 320,
            ThumbSize::Large => 1280,
        }
    }
}

impl fmt::Display for ThumbSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An encoded thumbnail.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbnail {
    pub size: ThumbSize,
    pub width: u32,
    pub height: u32,
    /// "image/jpeg", or "image/png" when the source has alpha.
    pub mime: &'static str,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thumbnail")
            .field("size", &self.size)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("mime", &self.mime)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

fn map_image_error(err: ImageError, dims: Option<(u32, u32)>, limits: &ImageLimits) -> MediaError {
    match err {
        ImageError::Limits(_) => match dims {
            Some((width, height)) => MediaError::TooManyPixels {
                width,
                height,
                max_pixels: limits.max_pixels,
            },
            None => MediaError::BadImage("image exceeds decoder limits".to_owned()),
        },
        ImageError::Unsupported(_) => MediaError::Unsupported {
            reason: "unsupported image format or feature".to_owned(),
        },
        ImageError::IoError(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            MediaError::BadImage("truncated or invalid image data".to_owned())
        }
        ImageError::IoError(e) => MediaError::Io(e),
        other => MediaError::BadImage(other.to_string()),
    }
}

/// Runs image code, turning a decoder panic on hostile input into `BadImage`.
fn guarded<T>(f: impl FnOnce() -> Result<T, MediaError>) -> Result<T, MediaError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(MediaError::BadImage("image decoder failed".to_owned())))
}

fn open_reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, MediaError> {
    let reader = ImageReader::open(path)
        .map_err(MediaError::from_io_not_found)?
        .with_guessed_format()?;
    if reader.format().is_none() {
        return Err(MediaError::Unsupported {
            reason: "unknown image format".to_owned(),
        });
    }
    Ok(reader)
}

/// The size declared by a PNG's IHDR chunk (always the first chunk), if `head` is a PNG.
/// Checked before any decoder is involved, so a bomb is refused even when the rest of
/// the file is missing.
fn png_declared_size(head: &[u8]) -> Option<(u32, u32)> {
    if !head.starts_with(b"\x89PNG\r\n\x1a\n") || head.get(12..16)? != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(head.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(head.get(20..24)?.try_into().ok()?);
    Some((w, h))
}

/// The first `len` bytes of the file (fewer if it is shorter).
fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>, MediaError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(MediaError::from_io_not_found)?;
    let mut head = Vec::new();
    file.take(len).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads the image's dimensions from its header only (nothing is decoded) and refuses
/// images over `limits` with `TooManyPixels`.
pub fn probe(path: &Path, limits: &ImageLimits) -> Result<(u32, u32), MediaError> {
    if let Some((w, h)) = png_declared_size(&read_prefix(path, 24)?) {
        limits.check(w, h)?;
    }
    let mut reader = open_reader(path)?;
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(HEADER_ALLOC_LIMIT);
    reader.limits(header_limits);
    let (width, height) = guarded(|| {
        reader
            .into_dimensions()
            .map_err(|e| map_image_error(e, None, limits))
    })?;
    limits.check(width, height)?;
    Ok((width, height))
}

/// Output dimensions to fit `(w, h)` within `max x max`, never upscaling.
fn fit_within(w: u32, h: u32, max: u32) -> (u32, u32) {
    if w <= max && h <= max {
        return (w, h);
    }
    let (long, short) = (u64::from(w.max(h)), u64::from(w.min(h)));
    let scaled = ((short * u64::from(max) + long / 2) / long).clamp(1, u64::from(max));
    let scaled = u32::try_from(scaled).unwrap_or(max);
    if w >= h {
        (max, scaled)
    } else {
        (scaled, max)
    }
}

fn resize_to(img: &DynamicImage, w: u32, h: u32) -> DynamicImage {
    if img.width() == w && img.height() == h {
        img.clone()
    } else {
        img.resize_exact(w, h, RESIZE_FILTER)
    }
}

/// Centre square of the short side, scaled down to at most `side`.
fn square_crop(img: &DynamicImage, side: u32) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    let short = w.min(h);
    let cropped = img.crop_imm((w - short) / 2, (h - short) / 2, short, short);
    let out = short.min(side);
    resize_to(&cropped, out, out)
}

fn encode(img: &DynamicImage, alpha: bool) -> Result<(&'static str, Vec<u8>), MediaError> {
    let mut out = Cursor::new(Vec::new());
    let result = if alpha {
        img.to_rgba8()
            .write_with_encoder(PngEncoder::new(&mut out))
            .map(|()| "image/png")
    } else {
        img.to_rgb8()
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY))
            .map(|()| "image/jpeg")
    };
    let mime = result.map_err(|e| MediaError::BadImage(format!("cannot encode thumbnail: {e}")))?;
    Ok((mime, out.into_inner()))
}

/// Makes the small, medium and large thumbnails of the image at `path` (in
/// [`ThumbSize::ALL`] order). The header is probed first (`TooManyPixels` before any
/// decoding) and the decoder runs with `image::Limits` as a second guard. Animated GIFs
/// use their first frame. Output is JPEG, or PNG when the source has an alpha channel.
/// Thumbnails are never larger than the source.
pub fn thumbnails(path: &Path, limits: &ImageLimits) -> Result<Vec<Thumbnail>, MediaError> {
    let dims = probe(path, limits)?;
    let mut reader = open_reader(path)?;
    reader.limits(limits.decode_limits());
    guarded(|| {
        let img = reader
            .decode()
            .map_err(|e| map_image_error(e, Some(dims), limits))?;
        let (w, h) = (img.width(), img.height());
        if w == 0 || h == 0 {
            return Err(MediaError::BadImage("image has no pixels".to_owned()));
        }
        limits.check(w, h)?;
        let alpha = img.color().has_alpha();

        let (lw, lh) = fit_within(w, h, ThumbSize::Large.max_side());
        let large = resize_to(&img, lw, lh);
        let (mw, mh) = fit_within(w, h, ThumbSize::Medium.max_side());
        let medium = resize_to(&large, mw, mh);
        // Crop the small one from the large one unless that lost resolution it needs.
        let small_side = ThumbSize::Small.max_side();
        let small = if lw.min(lh) >= small_side {
            square_crop(&large, small_side)
        } else {
            square_crop(&img, small_side)
        };
        drop(img);

        [
            (ThumbSize::Small, small),
            (ThumbSize::Medium, medium),
            (ThumbSize::Large, large),
        ]
        .into_iter()
        .map(|(size, thumb)| {
            let (mime, bytes) = encode(&thumb, alpha)?;
            Ok(Thumbnail {
                size,
                width: thumb.width(),
                height: thumb.height(),
                mime,
                bytes,
            })
        })
        .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_never_upscales_and_keeps_aspect() {
        assert_eq!(fit_within(2000, 1000, 320), (320, 160));
        assert_eq!(fit_within(1000, 2000, 1280), (640, 1280));
        assert_eq!(fit_within(50, 40, 320), (50, 40));
        assert_eq!(fit_within(320, 320, 320), (320, 320));
        assert_eq!(fit_within(10_000, 1, 320), (320, 1));
        assert_eq!(fit_within(16_384, 16_384, 96), (96, 96));
        assert_eq!(fit_within(333, 1000, 320), (107, 320));
    }

    #[test]
    fn thumb_size_names() {
        for s in ThumbSize::ALL {
            assert_eq!(ThumbSize::parse(s.as_str()), Some(s));
        }
        assert_eq!(ThumbSize::parse("xl"), None);
        assert_eq!(ThumbSize::parse("S"), None);
        assert_eq!(ThumbSize::Medium.to_string(), "m");
    }

    #[test]
    fn limits_check() {
        let l = ImageLimits::default();
        assert!(l.check(16_384, 2_000).is_ok());
        assert!(matches!(
            l.check(16_385, 1),
            Err(MediaError::TooManyPixels {
                width: 16_385,
                height: 1,
                ..
            })
        ));
        assert!(l.check(8_000, 5_001).is_err());
        assert!(l.check(u32::MAX, u32::MAX).is_err());
    }
}
