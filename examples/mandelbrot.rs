//! A newcomer's first job: render the Mandelbrot set, one image row band per fragment.
//!
//! ```text
//! cargo run --release --example mandelbrot                      # embedded one-host cluster
//! fragmenta launch -n 4 -- target/release/examples/mandelbrot   # four processes (CLUSTER)
//! ```
//!
//! A typed job: each fragment returns its band of rows and `merge` copies it into the image,
//! whether the band was computed here or on another host. The result is `mandelbrot.png`.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

#[derive(Serialize, Deserialize)]
struct Mandelbrot {
    width: usize,
    height: usize,
    rows_per_fragment: usize,
    max_iter: u32,
    #[serde(skip)]
    image: Mutex<Vec<u8>>, // grey levels, filled on the host that started the job
}

impl Mandelbrot {
    /// Computes one band of rows into `out` (grey levels).
    fn band(&self, index: usize, out: &mut Vec<u8>) {
        let y0 = index * self.rows_per_fragment;
        let y1 = (y0 + self.rows_per_fragment).min(self.height);
        for y in y0..y1 {
            for x in 0..self.width {
                let c_re = -2.2 + 3.0 * x as f64 / self.width as f64;
                let c_im = -1.2 + 2.4 * y as f64 / self.height as f64;
                let (mut re, mut im, mut n) = (0.0f64, 0.0f64, 0);
                while n < self.max_iter && re * re + im * im <= 4.0 {
                    (re, im) = (re * re - im * im + c_re, 2.0 * re * im + c_im);
                    n += 1;
                }
                let shade = if n == self.max_iter {
                    0
                } else {
                    (255.0 * (1.0 - (n as f64).ln_1p() / (self.max_iter as f64).ln_1p())) as u8
                };
                out.push(shade);
            }
        }
    }

    fn place(&self, index: usize, rows: &[u8]) {
        let start = index * self.rows_per_fragment * self.width;
        let mut image = self.image.lock().unwrap_or_else(|e| e.into_inner());
        let end = (start + rows.len()).min(image.len());
        image[start..end].copy_from_slice(&rows[..end - start]);
    }
}

#[fragmenta::job(name = "fragmenta.examples.mandelbrot")]
impl TypedJob for Mandelbrot {
    type Output = Vec<u8>; // one band of rows, grey levels

    fn run(&self, f: &Fragment<'_>) -> Vec<u8> {
        let mut rows = Vec::with_capacity(self.rows_per_fragment * self.width);
        self.band(f.index, &mut rows);
        rows
    }

    fn merge(&self, index: usize, rows: Vec<u8>) {
        self.place(index, &rows); // each band lands in its own rows: any order will do
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn main() -> Result<(), BoxError> {
    // The runtime's log on stderr; RUST_LOG=fragmenta_runtime=debug adds links, jobs and
    // fragment blocks with their ids.
    fragmenta::init_logging();
    // Every host runs this program: `spmd` joins the embedded one-host cluster or the cluster
    // `fragmenta launch` (or a config) describes, runs the closure on the primary, and serves
    // fragments on the others until it is done.
    fragmenta::spmd(|cluster| {
        let (width, height, rows) = (1200, 800, 4);
        let job = Arc::new(Mandelbrot {
            width,
            height,
            rows_per_fragment: rows,
            max_iter: 500,
            image: Mutex::new(vec![0; width * height]),
        });
        let fragments = height.div_ceil(rows);
        let handle = cluster.submit(&job, fragments)?;
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let bar = indicatif::ProgressBar::new(fragments as u64);
            while !handle.is_finished() {
                bar.set_position(handle.progress().0 as u64);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            bar.finish_and_clear();
        }
        let report = handle.wait()?;
        println!(
            "{} of {} fragments done on {} host(s) in {:.1} ms; per host: {:?}",
            report.done().len(),
            report.count,
            cluster.hosts().len(),
            report.elapsed.as_secs_f64() * 1e3,
            report
                .per_host
                .iter()
                .map(|(h, n)| format!("{h}: {n}"))
                .collect::<Vec<_>>()
        );
        let image = job.image.lock().unwrap_or_else(|e| e.into_inner());
        let file = std::fs::File::create("mandelbrot.png")?;
        let mut encoder =
            png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.write_header()?.write_image_data(&image)?;
        println!("wrote mandelbrot.png ({width}x{height})");
        Ok(())
    })
}
