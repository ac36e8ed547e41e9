//! Scatter plots as PNG files, with no dependency: RGB images, dots coloured by a diverging
//! map, and a PNG writer whose zlib stream uses stored (uncompressed) blocks, which every
//! reader accepts.

use std::path::Path;

pub type Rgb = [u8; 3];

/// An RGB image, row-major from the top left.
pub struct Image {
    pub width: usize,
    pub height: usize,
    pixels: Vec<Rgb>,
}

impl Image {
    pub fn new(width: usize, height: usize, background: Rgb) -> Image {
        Image {
            width,
            height,
            pixels: vec![background; width * height],
        }
    }

    /// A filled disc of `radius` pixels at `(x, y)`; what falls outside is clipped.
    pub fn dot(&mut self, x: f64, y: f64, radius: f64, colour: Rgb) {
        let r = radius.ceil() as i64;
        let (cx, cy) = (x.round() as i64, y.round() as i64);
        for dy in -r..=r {
            for dx in -r..=r {
                if ((dx * dx + dy * dy) as f64) > radius * radius + 0.5 {
                    continue;
                }
                let (px, py) = (cx + dx, cy + dy);
                if px >= 0 && py >= 0 && (px as usize) < self.width && (py as usize) < self.height {
                    self.pixels[py as usize * self.width + px as usize] = colour;
                }
            }
        }
    }

    /// A filled rectangle `[x0, x1) x [y0, y1)`, clipped.
    pub fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, colour: Rgb) {
        for y in y0..y1.min(self.height) {
            for x in x0..x1.min(self.width) {
                self.pixels[y * self.width + x] = colour;
            }
        }
    }

    /// Copies `other` with its top left corner at `(x, y)`.
    pub fn paste(&mut self, other: &Image, x: usize, y: usize) {
        for row in 0..other.height.min(self.height.saturating_sub(y)) {
            for col in 0..other.width.min(self.width.saturating_sub(x)) {
                self.pixels[(y + row) * self.width + x + col] =
                    other.pixels[row * other.width + col];
            }
        }
    }

    pub fn write_png(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.png())
    }

    /// The image as a PNG file: 8-bit RGB, no interlace, each row filtered with `None`.
    pub fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.height * (1 + 3 * self.width));
        for row in self.pixels.chunks(self.width.max(1)) {
            raw.push(0);
            row.iter().for_each(|p| raw.extend_from_slice(p));
        }
        let mut header = Vec::new();
        header.extend_from_slice(&(self.width as u32).to_be_bytes());
        header.extend_from_slice(&(self.height as u32).to_be_bytes());
        header.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &header);
        chunk(&mut png, b"IDAT", &zlib_stored(&raw));
        chunk(&mut png, b"IEND", &[]);
        png
    }
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored deflate blocks (at most 65535 bytes each).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + byte as u32) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A diverging colour map: blue below 0, white at 0, red above, saturated at `-limit` and
/// `limit`.
pub fn diverging(value: f64, limit: f64) -> Rgb {
    const BLUE: [f64; 3] = [33.0, 102.0, 172.0];
    const WHITE: [f64; 3] = [247.0, 247.0, 247.0];
    const RED: [f64; 3] = [178.0, 24.0, 43.0];
    let t = if limit > 0.0 && value.is_finite() {
        (value / limit).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (end, t) = if t < 0.0 { (BLUE, -t) } else { (RED, t) };
    std::array::from_fn(|c| (WHITE[c] + (end[c] - WHITE[c]) * t).round() as u8)
}

/// A scatter plot of `points` (x, y, depth, colour) in a square panel of `size` pixels: scaled
/// to fit with a margin, the y axis up, farther points (larger depth) drawn first.
pub fn scatter(points: &[(f64, f64, f64, Rgb)], size: usize, radius: f64) -> Image {
    let mut image = Image::new(size, size, [255, 255, 255]);
    let finite = points.iter().filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in finite {
        lo = [lo[0].min(p.0), lo[1].min(p.1)];
        hi = [hi[0].max(p.0), hi[1].max(p.1)];
    }
    let span = (hi[0] - lo[0]).max(hi[1] - lo[1]);
    if span.is_nan() || span <= 0.0 {
        return image;
    }
    let margin = 0.06 * size as f64;
    let scale = (size as f64 - 2.0 * margin) / span;
    let centre = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
    let mut order: Vec<&(f64, f64, f64, Rgb)> = points.iter().collect();
    order.sort_by(|a, b| b.2.total_cmp(&a.2));
    for &(x, y, _, colour) in order {
        let px = size as f64 / 2.0 + (x - centre[0]) * scale;
        let py = size as f64 / 2.0 - (y - centre[1]) * scale;
        image.dot(px, py, radius, colour);
    }
    image
}

/// `(x, y, depth)` of a 3-D point seen from azimuth `azimuth` and elevation `elevation`
/// (radians), orthographically: depth grows away from the viewer.
pub fn project(p: [f64; 3], azimuth: f64, elevation: f64) -> (f64, f64, f64) {
    let (sa, ca) = azimuth.sin_cos();
    let (se, ce) = elevation.sin_cos();
    let x = ca * p[0] + sa * p[1];
    let toward = -sa * p[0] + ca * p[1];
    let y = ce * p[2] - se * toward;
    let depth = ce * toward + se * p[2];
    (x, y, depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_definitions() {
        // The standard check values of CRC-32 and Adler-32 on "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let z = zlib_stored(b"123456789");
        assert_eq!(&z[z.len() - 4..], &0x091E_01DEu32.to_be_bytes());
        // Long data: several stored blocks, only the last one final.
        let long = vec![7u8; 70000];
        let z = zlib_stored(&long);
        assert_eq!(z[2], 0);
        assert_eq!(z[2 + 5 + 65535], 1);
    }

    #[test]
    fn an_image_becomes_a_png_of_its_size() {
        let mut image = Image::new(3, 2, [0, 0, 0]);
        image.dot(1.0, 1.0, 0.0, [255, 0, 0]);
        let png = image.png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[16..24], &[0, 0, 0, 3, 0, 0, 0, 2]);
        assert_eq!(diverging(0.0, 1.0), [247, 247, 247]);
        assert_eq!(diverging(-5.0, 1.0), [33, 102, 172]);
        assert_eq!(diverging(5.0, 1.0), [178, 24, 43]);
    }
}
