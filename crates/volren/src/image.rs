//! Premultiplied RGBA images, the `over` operator and PNG output.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VolrenError};

/// A premultiplied RGBA pixel.
pub type Rgba = [f32; 4];

/// Porter-Duff `front over back` on premultiplied RGBA:
/// `front + (1 - front.alpha) * back` per channel.
#[inline]
pub fn over(front: Rgba, back: Rgba) -> Rgba {
    let t = 1.0 - front[3];
    [
        front[0] + t * back[0],
        front[1] + t * back[1],
        front[2] + t * back[2],
        front[3] + t * back[3],
    ]
}

/// A pixel rectangle `[x0, x1) x [y0, y1)` (may be empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rect {
    /// First column.
    pub x0: u32,
    /// First row.
    pub y0: u32,
    /// End column (exclusive).
    pub x1: u32,
    /// End row (exclusive).
    pub y1: u32,
}

impl Rect {
    /// The whole `width x height` image.
    pub fn full(width: u32, height: u32) -> Self {
        Rect {
            x0: 0,
            y0: 0,
            x1: width,
            y1: height,
        }
    }
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }
    /// Pixel count.
    pub fn area(&self) -> usize {
        self.width() as usize * self.height() as usize
    }
    /// Whether the rectangle holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.area() == 0
    }
    /// Whether pixel `(x, y)` lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }
    /// Intersection (empty rectangles normalised to the default).
    pub fn intersect(&self, o: &Rect) -> Rect {
        let r = Rect {
            x0: self.x0.max(o.x0),
            y0: self.y0.max(o.y0),
            x1: self.x1.min(o.x1),
            y1: self.y1.min(o.y1),
        };
        if r.is_empty() {
            Rect::default()
        } else {
            r
        }
    }
    /// Smallest rectangle holding both (an empty operand is ignored).
    pub fn union(&self, o: &Rect) -> Rect {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        Rect {
            x0: self.x0.min(o.x0),
            y0: self.y0.min(o.y0),
            x1: self.x1.max(o.x1),
            y1: self.y1.max(o.y1),
        }
    }
}

/// A full-frame premultiplied RGBA f32 image, rows top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` premultiplied pixels, row-major.
    pub pixels: Vec<Rgba>,
}

/// One brick's contribution: premultiplied RGBA for the pixels of `rect` only (row-major
/// within the rectangle), `rect` being the brick's clamped screen-space bounding box.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialImage {
    /// Full image width.
    pub width: u32,
    /// Full image height.
    pub height: u32,
    /// The covered rectangle.
    pub rect: Rect,
    /// `rect.area()` pixels.
    pub pixels: Vec<Rgba>,
}

impl PartialImage {
    /// Pixel at absolute image coordinates, transparent outside `rect`.
    pub fn get(&self, x: u32, y: u32) -> Rgba {
        if self.rect.contains(x, y) {
            self.pixels[((y - self.rect.y0) * self.rect.width() + (x - self.rect.x0)) as usize]
        } else {
            [0.0; 4]
        }
    }

    /// Bytes this partial takes on the wire as f32 RGBA (16 per pixel).
    pub fn wire_bytes(&self) -> u64 {
        self.rect.area() as u64 * 16
    }
}

impl Image {
    /// A fully transparent image.
    pub fn transparent(width: u32, height: u32) -> Self {
        Image {
            width,
            height,
            pixels: vec![[0.0; 4]; width as usize * height as usize],
        }
    }

    /// Pixel `(x, y)`.
    pub fn get(&self, x: u32, y: u32) -> Rgba {
        self.pixels[y as usize * self.width as usize + x as usize]
    }

    /// 8-bit RGB of the image composited over an opaque `background`: each channel is
    /// `c + (1 - alpha) * bg` (premultiplied `c`), i.e. the straight colour blended with the
    /// background by its alpha, rounded.
    pub fn to_rgb8(&self, background: [u8; 3]) -> Vec<u8> {
        let bg = background.map(|b| f32::from(b) / 255.0);
        let mut out = Vec::with_capacity(self.pixels.len() * 3);
        for p in &self.pixels {
            let t = 1.0 - p[3].clamp(0.0, 1.0);
            for c in 0..3 {
                out.push(((p[c] + t * bg[c]).clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        out
    }

    /// Encodes the image over an opaque `background` as an 8-bit RGB PNG.
    pub fn to_png(&self, background: [u8; 3]) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut buf, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .map_err(|e| VolrenError::Png(e.to_string()))?;
            w.write_image_data(&self.to_rgb8(background))
                .map_err(|e| VolrenError::Png(e.to_string()))?;
            w.finish().map_err(|e| VolrenError::Png(e.to_string()))?;
        }
        Ok(buf)
    }

    /// Writes [`Image::to_png`] to `path`.
    pub fn write_png(&self, path: impl AsRef<Path>, background: [u8; 3]) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_png(background)?).map_err(|source| VolrenError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
