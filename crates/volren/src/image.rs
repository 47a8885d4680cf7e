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

    /// The same image with `rect` shrunk to the smallest rectangle holding every pixel that
    /// is not fully transparent (all four channels 0); empty when there is none. Compositing
    /// the result gives the same image: `over` with a transparent pixel changes nothing.
    pub fn trimmed(self) -> PartialImage {
        let w = self.rect.width() as usize;
        let mut bbox = Rect::default();
        if w > 0 {
            for (row, px) in self.pixels.chunks_exact(w).enumerate() {
                let Some(first) = px.iter().position(|p| *p != [0.0; 4]) else {
                    continue;
                };
                let last = px.iter().rposition(|p| *p != [0.0; 4]).unwrap_or(first);
                let y = self.rect.y0 + row as u32;
                bbox = bbox.union(&Rect {
                    x0: self.rect.x0 + first as u32,
                    y0: y,
                    x1: self.rect.x0 + last as u32 + 1,
                    y1: y + 1,
                });
            }
        }
        if bbox == self.rect {
            return self;
        }
        let mut pixels = Vec::with_capacity(bbox.area());
        for y in bbox.y0..bbox.y1 {
            let start = (y - self.rect.y0) as usize * w + (bbox.x0 - self.rect.x0) as usize;
            pixels.extend_from_slice(&self.pixels[start..start + bbox.width() as usize]);
        }
        PartialImage {
            width: self.width,
            height: self.height,
            rect: bbox,
            pixels,
        }
    }

    /// Encodes the image for the wire: `x0, y0, x1, y1` (u32 little-endian) followed by the
    /// pixels of `rect` as f32 little-endian RGBA, row-major. The full image size is not
    /// included: the receiver knows it.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.pixels.len() * 16);
        self.write_wire(&mut out);
        out
    }

    /// Appends [`PartialImage::to_wire`]'s bytes to `out`.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        out.reserve(16 + self.pixels.len() * 16);
        for v in [self.rect.x0, self.rect.y0, self.rect.x1, self.rect.y1] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for c in self.pixels.as_flattened() {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    /// Decodes [`PartialImage::to_wire`] bytes for a `width x height` image. Fails when the
    /// rectangle does not fit in the image or the byte count does not match it.
    pub fn from_wire(width: u32, height: u32, bytes: &[u8]) -> Result<PartialImage> {
        let bad = |why: String| VolrenError::InvalidArgument(format!("partial image: {why}"));
        let Some((head, body)) = bytes.split_first_chunk::<16>() else {
            return Err(bad(format!("{} bytes, too short", bytes.len())));
        };
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let rect = Rect {
            x0: word(0),
            y0: word(4),
            x1: word(8),
            y1: word(12),
        };
        if rect.x0 > rect.x1 || rect.y0 > rect.y1 || rect.x1 > width || rect.y1 > height {
            return Err(bad(format!("{rect:?} does not fit in {width}x{height}")));
        }
        if body.len() as u64 != rect.area() as u64 * 16 {
            return Err(bad(format!(
                "{} pixel bytes for {rect:?}, expected {}",
                body.len(),
                rect.area() * 16
            )));
        }
        let pixels = body
            .chunks_exact(16)
            .map(|p| {
                let c = |i: usize| f32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                [c(0), c(4), c(8), c(12)]
            })
            .collect();
        Ok(PartialImage {
            width,
            height,
            rect: if rect.is_empty() {
                Rect::default()
            } else {
                rect
            },
            pixels,
        })
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

    /// Composites `back` behind this image: `self = self over back` on the pixels of
    /// `back.rect` (the part inside this image). Blending partial images front to back, one
    /// `blend_behind` each, is [`crate::composite_direct`].
    pub fn blend_behind(&mut self, back: &PartialImage) {
        let r = back.rect.intersect(&Rect::full(self.width, self.height));
        let (w, bw) = (self.width as usize, back.rect.width() as usize);
        for y in r.y0..r.y1 {
            let dst = y as usize * w;
            let src = (y - back.rect.y0) as usize * bw + (r.x0 - back.rect.x0) as usize;
            let n = r.width() as usize;
            let d = &mut self.pixels[dst + r.x0 as usize..dst + r.x0 as usize + n];
            for (d, s) in d.iter_mut().zip(&back.pixels[src..src + n]) {
                *d = over(*d, *s);
            }
        }
    }

    /// Copies `part`'s pixels (the part inside this image) into this image, replacing what
    /// was there.
    pub fn paste(&mut self, part: &PartialImage) {
        let r = part.rect.intersect(&Rect::full(self.width, self.height));
        let (w, pw) = (self.width as usize, part.rect.width() as usize);
        for y in r.y0..r.y1 {
            let dst = y as usize * w + r.x0 as usize;
            let src = (y - part.rect.y0) as usize * pw + (r.x0 - part.rect.x0) as usize;
            let n = r.width() as usize;
            self.pixels[dst..dst + n].copy_from_slice(&part.pixels[src..src + n]);
        }
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
        std::fs::write(path, self.to_png(background)?).map_err(|source| VolrenError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}
