//! Sort-last rendering on a fragmenta cluster: the jobs that load bricks into each host's
//! Fast I/O context, ray cast them where they live and composite the partial images, and
//! [`SortLast`], the driver that runs them from one host.
//!
//! # One frame
//!
//! 1. [`SortLast::load`] runs [`LoadBricks`], a USER_DEFINED job with one fragment per brick:
//!    fragment `k` runs on the host of rank `k`, generates (Marschner-Lobb) or reads (raw file)
//!    brick `k` straight into a new Fast I/O allocation and publishes it as
//!    [`SortLast::brick_name`]`(k)`. Publications stay on their host across jobs until
//!    [`SortLast::unload`]; loading again finds them and does nothing.
//! 2. [`SortLast::render`] runs [`RenderBricks`]: fragment `i` renders brick `order[i]`, where
//!    `order` is the camera's [`visibility_order`], on the host holding it, reading the voxels
//!    in place from the mapped publication (no copy).
//! 3. Compositing with the premultiplied `over` operator:
//!    - [`Compositing::Direct`]: remote fragments stream their partial image (cut to its
//!      non-transparent pixels) to the initiator. Because fragment indices follow the
//!      visibility order and chunks are delivered in fragment order, partial images arrive
//!      front to back, and the initiator blends each behind the image so far as it arrives
//!      (images of fragments that ran on the initiator itself take their place in the order).
//!    - [`Compositing::BinarySwap`]: each host keeps its partial image in a Fast I/O
//!      allocation and publishes the part its first partner needs. Then one [`SwapStep`] job
//!      per step of the [`binary_swap_schedule`] (the folds of a non-power-of-two host count,
//!      then `log2` rounds) has one fragment per receiving host: it fetches the partner's
//!      piece with [`Transaction::fetch`], composites it in the pair's visibility order, keeps
//!      its half and publishes the piece for its next step. The last step returns each host's
//!      final region to the initiator. A [`FreePublications`] job then frees the frame's
//!      allocations on every host.
//!
//! Every job must be registered on every host (`Cluster::builder().register::<J>()` for
//! [`LoadBricks`], [`RenderBricks`], [`SwapStep`] and [`FreePublications`]). The driver runs
//! jobs through [`JobRunner`], which a program implements for its cluster handle in a few
//! lines; this crate does not depend on the runtime.
//!
//! # Fast I/O layouts
//!
//! - A brick: `f32` voxels in `[0,1]`, dims `[z, y, x]` of the brick's ghost-inclusive box
//!   (x fastest).
//! - A host's image during binary swap, and a piece sent to a partner: `f32`, dims `[n]`: four
//!   values `x0, y0, x1, y1` (a rectangle, exact in `f32` as images are at most
//!   [`MAX_IMAGE_SIDE`] pixels wide), then premultiplied RGBA pixels, row-major. For the image
//!   the rectangle bounds its non-transparent pixels and the pixels cover the whole frame; for
//!   a piece they cover exactly the rectangle.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fragmenta_fastio::{ElementType, FastIo, FastIoError, LocalContext};
use fragmenta_job::{
    ClassId, ExecuteError, ExecutionContext, FragmentedJob, HostId, JobReport, ResultReader,
    ResultWriter, SchedulingMode, Transaction,
};
use serde::{Deserialize, Serialize};

use crate::brick::{bricks, load_brick_into, Brick};
use crate::camera::Camera;
use crate::composite::visibility_order;
use crate::error::VolrenError;
use crate::image::{over, Image, PartialImage, Rect};
use crate::render::{render_voxels, RenderParams};
use crate::swap::{binary_swap_schedule, Schedule};
use crate::tf::TransferFunction;
use crate::volume::VolumeSource;

/// Largest image side [`SortLast::render`] accepts, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Runs jobs on a cluster for [`SortLast`]. A program implements it for its cluster handle
/// (`fragmenta::Cluster`, whose `execute` has this signature):
///
/// ```
/// use std::sync::Arc;
/// use fragmenta_job::{ExecuteError, FragmentedJob, JobReport};
/// use fragmenta_volren::JobRunner;
/// # struct Cluster;
/// # impl Cluster {
/// #     fn execute<J: FragmentedJob>(&self, _: &Arc<J>, _: usize)
/// #         -> Result<JobReport, ExecuteError> { Err(ExecuteError::ShutDown) }
/// # }
///
/// struct OnCluster<'a>(&'a Cluster);
///
/// impl JobRunner for OnCluster<'_> {
///     fn run<J: FragmentedJob>(&self, job: &Arc<J>, count: usize)
///         -> Result<JobReport, ExecuteError> {
///         self.0.execute(job, count)
///     }
/// }
/// ```
pub trait JobRunner {
    /// Runs `job` split into `count` fragments and waits for its report.
    fn run<J: FragmentedJob>(&self, job: &Arc<J>, count: usize) -> Result<JobReport, ExecuteError>;
}

/// How partial images are composited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compositing {
    /// Every partial image streams to the initiator, which blends them front to back.
    Direct,
    /// Binary swap between the hosts, then a gather of the final regions at the initiator.
    /// On one host there is nothing to swap: the frame is composited as [`Compositing::Direct`].
    BinarySwap,
}

impl Compositing {
    /// Both strategies.
    pub const ALL: [Compositing; 2] = [Compositing::Direct, Compositing::BinarySwap];

    /// The command-line name: `direct` or `binary-swap`.
    pub fn name(self) -> &'static str {
        match self {
            Compositing::Direct => "direct",
            Compositing::BinarySwap => "binary-swap",
        }
    }
}

impl fmt::Display for Compositing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compositing {
    type Err = SortLastError;
    /// Accepts `direct` and `binary-swap` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, SortLastError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "direct" => Ok(Compositing::Direct),
            "binary-swap" => Ok(Compositing::BinarySwap),
            _ => Err(SortLastError::UnknownCompositing(s.to_string())),
        }
    }
}

/// What can go wrong while rendering on a cluster.
#[derive(Debug, thiserror::Error)]
pub enum SortLastError {
    /// A volume, camera or compositing argument is invalid.
    #[error(transparent)]
    Volren(#[from] VolrenError),
    /// An unknown compositing name.
    #[error("unknown compositing {0:?}: expected direct or binary-swap")]
    UnknownCompositing(String),
    /// No host to render on.
    #[error("no hosts to render on")]
    NoHosts,
    /// A host is listed twice.
    #[error("{0} is listed twice")]
    DuplicateHost(HostId),
    /// The volume is too small to give every host a brick.
    #[error("a {dims:?} volume cannot be split into {hosts} bricks")]
    TooManyHosts {
        /// Hosts asked for.
        hosts: usize,
        /// The volume's size.
        dims: [u32; 3],
    },
    /// The image is empty or larger than [`MAX_IMAGE_SIDE`] on a side.
    #[error("image size {width}x{height}: each side must be 1..={MAX_IMAGE_SIDE} pixels")]
    ImageSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// A job could not be started or waited for.
    #[error("the {stage} job could not run: {source}")]
    Execute {
        /// Which job.
        stage: &'static str,
        /// The runtime's error.
        #[source]
        source: ExecuteError,
    },
    /// Fragments of a job failed or were skipped.
    #[error("the {stage} job failed: {detail}")]
    Failed {
        /// Which job.
        stage: &'static str,
        /// The failed fragments, with their hosts and reasons.
        detail: String,
    },
}

/// What a [`SortLast::load`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// Wall time of the load job.
    pub elapsed: Duration,
    /// Bricks generated or read now (the others were already in their host's context).
    pub loaded: usize,
}

/// One rendered frame and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The composited image (premultiplied RGBA).
    pub image: Image,
    /// How it was composited.
    pub compositing: Compositing,
    /// Ray casting time of the slowest brick.
    pub render: Duration,
    /// Wall time from the start of the render job to the final image on the initiator,
    /// freeing the frame's Fast I/O allocations included.
    pub elapsed: Duration,
    /// Bytes each host received for this frame (fetched pieces, and result chunks on the
    /// initiator), every rendering host listed, ascending by host.
    pub received: Vec<(HostId, u64)>,
}

impl Frame {
    /// Everything but the slowest brick's ray casting: moving and blending images, and job
    /// overheads (`elapsed - render`).
    pub fn composite(&self) -> Duration {
        self.elapsed.saturating_sub(self.render)
    }

    /// The host that received the most bytes, and how many (ties: the lowest host id).
    pub fn busiest(&self) -> (HostId, u64) {
        self.received
            .iter()
            .copied()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .unwrap_or((HostId(0), 0))
    }
}

/// The driver of sort-last rendering: a volume split into one brick per host, brick `r` on
/// host `hosts[r]` (its *rank*). See the [module docs](self) for the jobs it runs.
#[derive(Clone, Debug)]
pub struct SortLast {
    source: VolumeSource,
    hosts: Vec<HostId>,
    bricks: Vec<Brick>,
    volume: String,
}

impl SortLast {
    /// Plans `source` split into `hosts.len()` bricks, brick `r` on `hosts[r]`. Put the
    /// initiator first: the binary-swap image region of rank 0 needs no transfer in the final
    /// gather.
    pub fn new(source: VolumeSource, hosts: Vec<HostId>) -> Result<Self, SortLastError> {
        if hosts.is_empty() {
            return Err(SortLastError::NoHosts);
        }
        for (i, h) in hosts.iter().enumerate() {
            if hosts[..i].contains(h) {
                return Err(SortLastError::DuplicateHost(*h));
            }
        }
        crate::volume::validate_dims(source.dims())?;
        let bricks = bricks(source.dims(), hosts.len());
        if bricks.len() != hosts.len() {
            return Err(SortLastError::TooManyHosts {
                hosts: hosts.len(),
                dims: source.dims(),
            });
        }
        let volume = format!("volren/{:016x}-{}", volume_hash(&source), hosts.len());
        Ok(SortLast {
            source,
            hosts,
            bricks,
            volume,
        })
    }

    /// The hosts, by rank.
    pub fn hosts(&self) -> &[HostId] {
        &self.hosts
    }

    /// The bricks, by rank.
    pub fn bricks(&self) -> &[Brick] {
        &self.bricks
    }

    /// The volume source.
    pub fn source(&self) -> &VolumeSource {
        &self.source
    }

    /// The Fast I/O name under which brick `rank` is published on its host: derived from the
    /// source (for a file: its path, size and modification time) and the brick count.
    pub fn brick_name(&self, rank: usize) -> String {
        brick_name(&self.volume, rank)
    }

    /// Generates or reads every brick on its host into Fast I/O (bricks already there are
    /// kept).
    pub fn load<R: JobRunner>(&self, runner: &R) -> Result<LoadReport, SortLastError> {
        let job = Arc::new(LoadBricks {
            source: self.source.clone(),
            volume: self.volume.clone(),
            bricks: self.bricks.clone(),
            hosts: self.hosts.clone(),
            tally: Mutex::default(),
        });
        let report = execute(runner, "load", &job, self.bricks.len())?;
        let loaded = lock(&job.tally).work_done;
        Ok(LoadReport {
            elapsed: report.elapsed,
            loaded,
        })
    }

    /// Frees the bricks on their hosts.
    pub fn unload<R: JobRunner>(&self, runner: &R) -> Result<(), SortLastError> {
        let names = (0..self.hosts.len())
            .map(|r| vec![self.brick_name(r)])
            .collect();
        free(runner, &self.hosts, names)
    }

    /// Renders one frame of the loaded bricks (see [`SortLast::load`]) and composites it on
    /// the initiator.
    pub fn render<R: JobRunner>(
        &self,
        runner: &R,
        camera: &Camera,
        tf: &TransferFunction,
        params: &RenderParams,
        compositing: Compositing,
    ) -> Result<Frame, SortLastError> {
        let (width, height) = (camera.width, camera.height);
        if !(1..=MAX_IMAGE_SIDE).contains(&width) || !(1..=MAX_IMAGE_SIDE).contains(&height) {
            return Err(SortLastError::ImageSize { width, height });
        }
        let order = visibility_order(&self.bricks, camera);
        let start = Instant::now();
        let swap = match compositing {
            Compositing::BinarySwap if self.hosts.len() > 1 => Some(SwapFrame {
                frame: frame_name(),
                schedule: binary_swap_schedule(&order, width, height)?,
            }),
            _ => None,
        };
        let job = Arc::new(RenderBricks {
            volume: self.volume.clone(),
            bricks: self.bricks.clone(),
            hosts: self.hosts.clone(),
            order,
            camera: *camera,
            tf: tf.clone(),
            params: *params,
            swap: swap.clone(),
            tally: Mutex::default(),
            blend: Mutex::new(Blend {
                image: Image::transparent(width, height),
                next: 0,
                pending: BTreeMap::new(),
            }),
        });
        let mut received: BTreeMap<HostId, u64> = self.hosts.iter().map(|&h| (h, 0)).collect();
        let rendered = execute(runner, "render", &job, self.bricks.len());
        let render = lock(&job.tally).slowest;
        add_received(&mut received, &lock(&job.tally).received);
        let image = match swap {
            None => {
                rendered?;
                let mut blend = lock(&job.blend);
                std::mem::replace(&mut blend.image, Image::transparent(0, 0))
            }
            Some(frame) => {
                let swapped = rendered.and_then(|_| self.swap(runner, &frame, &mut received));
                let freed = free(runner, &self.hosts, frame.names(&self.hosts));
                let image = swapped?;
                freed?;
                image
            }
        };
        Ok(Frame {
            image,
            compositing,
            render,
            elapsed: start.elapsed(),
            received: received.into_iter().collect(),
        })
    }

    /// Runs the binary-swap steps of `frame` and returns the gathered image.
    fn swap<R: JobRunner>(
        &self,
        runner: &R,
        frame: &SwapFrame,
        received: &mut BTreeMap<HostId, u64>,
    ) -> Result<Image, SortLastError> {
        let (width, height) = (frame.schedule.width, frame.schedule.height);
        let mut image = Image::transparent(width, height);
        for (step, plan) in frame.schedule.steps.iter().enumerate() {
            let job = Arc::new(SwapStep {
                frame: frame.clone(),
                hosts: self.hosts.clone(),
                step,
                tally: Mutex::default(),
                gathered: Mutex::new(Gathered(Image::transparent(0, 0))),
            });
            if step + 1 == frame.schedule.steps.len() {
                lock(&job.gathered).0 = Image::transparent(width, height);
            }
            execute(runner, "binary-swap step", &job, plan.transfers.len())?;
            add_received(received, &lock(&job.tally).received);
            if step + 1 == frame.schedule.steps.len() {
                image = std::mem::replace(&mut lock(&job.gathered).0, Image::transparent(0, 0));
            }
        }
        Ok(image)
    }
}

fn add_received(into: &mut BTreeMap<HostId, u64>, from: &BTreeMap<HostId, u64>) {
    for (h, b) in from {
        *into.entry(*h).or_insert(0) += b;
    }
}

/// Runs `job` and turns failed, skipped or cancelled fragments (and errors of fragments that
/// ran on the initiator) into an error.
fn execute<R: JobRunner, J: FragmentedJob + Work>(
    runner: &R,
    stage: &'static str,
    job: &Arc<J>,
    count: usize,
) -> Result<JobReport, SortLastError> {
    let report = runner
        .run(job, count)
        .map_err(|source| SortLastError::Execute { stage, source })?;
    let local_errors = std::mem::take(&mut lock(job.tally()).errors);
    if report.is_complete() && local_errors.is_empty() {
        return Ok(report);
    }
    let mut detail: Vec<String> = report
        .failures
        .iter()
        .map(|f| format!("fragment {} on {}: {}", f.index, f.host, f.reason))
        .collect();
    detail.extend(local_errors);
    if !report.skipped().is_empty() {
        detail.push(format!(
            "fragments {:?} skipped (host not in the cluster)",
            report.skipped().to_vec()
        ));
    }
    if !report.cancelled().is_empty() {
        detail.push(format!(
            "fragments {:?} cancelled",
            report.cancelled().to_vec()
        ));
    }
    Err(SortLastError::Failed {
        stage,
        detail: detail.join("; "),
    })
}

/// Frees `names[r]` on `hosts[r]` for every rank.
fn free<R: JobRunner>(
    runner: &R,
    hosts: &[HostId],
    names: Vec<Vec<String>>,
) -> Result<(), SortLastError> {
    let job = Arc::new(FreePublications {
        hosts: hosts.to_vec(),
        names,
        tally: Mutex::default(),
    });
    execute(runner, "free", &job, hosts.len()).map(drop)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// FNV-1a 64 of the source's description (for a file also its size and modification time,
/// so a changed file gets new names).
fn volume_hash(source: &VolumeSource) -> u64 {
    let mut text = format!("{source:?}");
    if let VolumeSource::Raw { path, .. } = source {
        if let Ok(meta) = std::fs::metadata(path) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            text.push_str(&format!("|{}|{mtime}", meta.len()));
        }
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn brick_name(volume: &str, rank: usize) -> String {
    format!("{volume}/brick-{rank}")
}

/// A name for one frame's binary-swap allocations, unique across processes and time.
fn frame_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "volren/frame-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a fragment reports to the initiator.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FragmentStats {
    /// The host it ran on.
    host: HostId,
    /// Time spent on its main work (loading or ray casting a brick, compositing a piece).
    busy_ns: u64,
    /// Bytes it fetched from other hosts.
    fetched: u64,
    /// Whether it did its work (false: the brick was already loaded).
    worked: bool,
}

/// The initiator's record of a job's fragments.
#[derive(Debug, Default)]
struct Tally {
    slowest: Duration,
    received: BTreeMap<HostId, u64>,
    work_done: usize,
    errors: Vec<String>,
}

impl FragmentStats {
    /// Bytes of [`FragmentStats::write`].
    const WIRE_LEN: usize = 22;

    /// Appends the stats and whether an image follows: host (u32), busy_ns, fetched (u64),
    /// worked, has_image (u8), little-endian.
    fn write(&self, has_image: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.host.0.to_le_bytes());
        out.extend_from_slice(&self.busy_ns.to_le_bytes());
        out.extend_from_slice(&self.fetched.to_le_bytes());
        out.push(u8::from(self.worked));
        out.push(u8::from(has_image));
    }

    /// Reads [`FragmentStats::write`]'s bytes: the stats, whether an image follows, the rest.
    fn read(bytes: &[u8]) -> Result<(FragmentStats, bool, &[u8]), String> {
        let Some((head, rest)) = bytes.split_first_chunk::<{ Self::WIRE_LEN }>() else {
            return Err(format!("{} bytes, too short", bytes.len()));
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let stats = FragmentStats {
            host: HostId(u32::from_le_bytes([head[0], head[1], head[2], head[3]])),
            busy_ns: u64_at(4),
            fetched: u64_at(12),
            worked: head[20] != 0,
        };
        Ok((stats, head[21] != 0, rest))
    }

    /// Nothing done yet, on `host`.
    fn on(host: HostId) -> Self {
        FragmentStats {
            host,
            busy_ns: 0,
            fetched: 0,
            worked: false,
        }
    }
}

impl Tally {
    fn add(&mut self, stats: &FragmentStats) {
        self.slowest = self.slowest.max(Duration::from_nanos(stats.busy_ns));
        *self.received.entry(stats.host).or_insert(0) += stats.fetched;
        self.work_done += usize::from(stats.worked);
    }
}

/// What one fragment produced.
struct Output {
    stats: FragmentStats,
    image: Option<PartialImage>,
}

/// The common shape of the jobs here: a fragment does its work on its host and may produce a
/// partial image, which the initiator takes (directly when the fragment ran there, through a
/// result chunk otherwise).
trait Work {
    fn work(&self, tx: &Transaction, index: usize) -> Result<Output, String>;
    fn take(&self, index: usize, image: PartialImage) {
        let _ = (index, image);
    }
    fn tally(&self) -> &Mutex<Tally>;
    /// The host fragment `index` runs on (`None`: no such fragment).
    fn host_of(&self, index: usize) -> Option<HostId>;
    /// Whether results must be delivered in fragment order.
    fn ordered(&self) -> bool {
        false
    }
    /// Size of the images fragments produce (0x0 when they produce none).
    fn image_size(&self) -> (u32, u32) {
        (0, 0)
    }
}

fn run_local<W: Work>(w: &W, tx: &Transaction, index: usize) {
    match w.work(tx, index) {
        Ok(out) => {
            lock(w.tally()).add(&out.stats);
            if let Some(image) = out.image {
                w.take(index, image);
            }
        }
        Err(e) => lock(w.tally())
            .errors
            .push(format!("fragment {index} on {}: {e}", tx.host())),
    }
}

fn run_remote<W: Work>(
    w: &W,
    out: &mut ResultWriter<'_>,
    tx: &Transaction,
    index: usize,
) -> std::io::Result<()> {
    let result = w.work(tx, index).map_err(std::io::Error::other)?;
    let image_bytes = result
        .image
        .as_ref()
        .map_or(0, |i| 16 + i.pixels.len() * 16);
    let mut bytes = Vec::with_capacity(FragmentStats::WIRE_LEN + image_bytes);
    result.stats.write(result.image.is_some(), &mut bytes);
    if let Some(image) = &result.image {
        image.write_wire(&mut bytes);
    }
    // One chunk, sent from this buffer as it is; the runtime adds an empty final chunk.
    out.write_chunk(bytes)
}

fn receive<W: Work>(w: &W, r: &mut ResultReader, tx: &Transaction, index: usize) {
    let mut tally = lock(w.tally());
    *tally.received.entry(tx.host()).or_insert(0) += r.len() as u64;
    if r.is_empty() {
        return; // the final chunk the runtime adds
    }
    let decoded = FragmentStats::read(r.bytes()).and_then(|(stats, has_image, rest)| {
        let image = if has_image {
            let (width, height) = w.image_size();
            Some(PartialImage::from_wire(width, height, rest).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok((stats, image))
    });
    match decoded {
        Ok((stats, image)) => {
            tally.add(&stats);
            drop(tally);
            if let Some(image) = image {
                w.take(index, image);
            }
        }
        Err(e) => tally
            .errors
            .push(format!("fragment {index}: unreadable result: {e}")),
    }
}

/// Implements [`FragmentedJob`] for a [`Work`] type as a USER_DEFINED job whose fragment `i`
/// runs on [`Work::host_of`]`(i)`.
macro_rules! work_job {
    ($ty:ty, $name:literal) => {
        impl FragmentedJob for $ty {
            const CLASS_ID: ClassId = ClassId::from_name($name);

            fn execute_fragment(
                &self,
                tx: &Transaction,
                index: usize,
                _: usize,
                _: &ExecutionContext,
            ) {
                run_local(self, tx, index);
            }

            fn execute_fragment_remote(
                &self,
                out: &mut ResultWriter<'_>,
                tx: &Transaction,
                index: usize,
                _: usize,
                _: &ExecutionContext,
            ) -> std::io::Result<()> {
                run_remote(self, out, tx, index)
            }

            fn receive_remote_result(
                &self,
                r: &mut ResultReader,
                tx: &Transaction,
                index: usize,
                _: usize,
            ) {
                receive(self, r, tx, index);
            }

            fn scheduling_mode(&self) -> SchedulingMode {
                SchedulingMode::UserDefined
            }

            fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
                for (i, slot) in slots.iter_mut().enumerate() {
                    *slot = self.host_of(i).unwrap_or(HostId::UNASSIGNED);
                }
            }

            fn allow_non_sequential_chunks(&self) -> bool {
                !self.ordered()
            }
        }
    };
}

fn context(tx: &Transaction) -> Result<&LocalContext, String> {
    tx.fastio()
        .ok_or_else(|| format!("{} has no Fast I/O context", tx.host()))
}

fn busy_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Fast I/O dims of a brick: `[z, y, x]` of its ghost-inclusive box.
fn brick_dims(brick: &Brick) -> [u64; 3] {
    let g = brick.ghost_dims();
    [u64::from(g[2]), u64::from(g[1]), u64::from(g[0])]
}

/// Loads (generates or reads) brick `k` into the Fast I/O context of the host of rank `k` and
/// publishes it. Made by [`SortLast::load`]; register it on every host.
#[derive(Serialize, Deserialize)]
pub struct LoadBricks {
    source: VolumeSource,
    volume: String,
    bricks: Vec<Brick>,
    hosts: Vec<HostId>,
    #[serde(skip)]
    tally: Mutex<Tally>,
}

impl Work for LoadBricks {
    fn work(&self, tx: &Transaction, index: usize) -> Result<Output, String> {
        let start = Instant::now();
        let brick = self
            .bricks
            .get(index)
            .ok_or_else(|| format!("no brick {index}"))?;
        let ctx = context(tx)?;
        let name = brick_name(&self.volume, index);
        let mut stats = FragmentStats::on(tx.host());
        if ctx.get(&name).is_ok() {
            return Ok(Output { stats, image: None });
        }
        let fail = |what: &str, e: &dyn fmt::Display| format!("brick {index}: {what}: {e}");
        let mut alloc = ctx
            .create(brick.ghost_voxel_count() as u64 * 4)
            .map_err(|e| fail("cannot allocate", &e))?;
        alloc
            .set_type_and_dimensions(ElementType::F32, &brick_dims(brick))
            .map_err(|e| fail("cannot describe", &e))?;
        {
            let mut map = alloc.map_write().map_err(|e| fail("cannot map", &e))?;
            let voxels = map
                .as_mut_slice::<f32>()
                .map_err(|e| fail("cannot map", &e))?;
            load_brick_into(&self.source, brick, voxels).map_err(|e| fail("cannot load", &e))?;
        }
        match ctx.publish(&alloc, &name) {
            Ok(()) | Err(FastIoError::NameTaken(_)) => {}
            Err(e) => return Err(fail("cannot publish", &e)),
        }
        stats.busy_ns = busy_since(start);
        stats.worked = true;
        Ok(Output { stats, image: None })
    }

    fn tally(&self) -> &Mutex<Tally> {
        &self.tally
    }

    fn host_of(&self, index: usize) -> Option<HostId> {
        self.hosts.get(index).copied()
    }
}

work_job!(LoadBricks, "fragmenta.volren.load-bricks");

/// The binary-swap plan of one frame, shared by its jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SwapFrame {
    /// Prefix of the frame's Fast I/O names.
    frame: String,
    schedule: Schedule,
}

impl SwapFrame {
    fn image_name(&self, rank: usize) -> String {
        format!("{}/image-{rank}", self.frame)
    }

    fn piece_name(&self, step: usize, from: usize) -> String {
        format!("{}/step-{step}/from-{from}", self.frame)
    }

    /// Every name the frame publishes on each rank's host.
    fn names(&self, hosts: &[HostId]) -> Vec<Vec<String>> {
        let mut names: Vec<Vec<String>> =
            (0..hosts.len()).map(|r| vec![self.image_name(r)]).collect();
        for (s, step) in self.schedule.steps.iter().enumerate() {
            for t in &step.transfers {
                if let Some(n) = names.get_mut(t.from) {
                    n.push(self.piece_name(s, t.from));
                }
            }
        }
        names
    }

    /// Stores rank `rank`'s partial image as its binary-swap image and publishes the piece
    /// of its first sending step.
    fn start(&self, ctx: &LocalContext, rank: usize, part: &PartialImage) -> Result<(), String> {
        let (w, h) = (self.schedule.width, self.schedule.height);
        let len = 4 + w as usize * h as usize * 4;
        let mut image = ctx
            .create(len as u64 * 4)
            .map_err(|e| format!("cannot allocate the swap image: {e}"))?;
        image
            .set_type_and_dimensions(ElementType::F32, &[len as u64])
            .map_err(|e| e.to_string())?;
        {
            let mut map = image.map_write().map_err(|e| e.to_string())?;
            let all = map.as_mut_slice::<f32>().map_err(|e| e.to_string())?;
            let (head, px) = all.split_at_mut(4);
            let rect = part.rect.intersect(&Rect::full(w, h));
            write_rect(head, rect);
            let pw = part.rect.width() as usize;
            let flat = part.pixels.as_flattened();
            for y in rect.y0..rect.y1 {
                let src =
                    ((y - part.rect.y0) as usize * pw + (rect.x0 - part.rect.x0) as usize) * 4;
                let dst = (y as usize * w as usize + rect.x0 as usize) * 4;
                let n = rect.width() as usize * 4;
                px[dst..dst + n].copy_from_slice(&flat[src..src + n]);
            }
            if let Some((step, t)) = self.schedule.next_send(rank, None) {
                self.publish_piece(ctx, step, rank, px, rect.intersect(&t.region))?;
            }
        }
        ctx.publish(&image, &self.image_name(rank))
            .map_err(|e| format!("cannot publish the swap image: {e}"))
    }

    /// Publishes the pixels of `rect` of a full-frame image `px` as rank `from`'s piece of
    /// `step`.
    fn publish_piece(
        &self,
        ctx: &LocalContext,
        step: usize,
        from: usize,
        px: &[f32],
        rect: Rect,
    ) -> Result<(), String> {
        let w = self.schedule.width as usize;
        let len = 4 + rect.area() * 4;
        let mut piece = ctx
            .create(len as u64 * 4)
            .map_err(|e| format!("cannot allocate a piece: {e}"))?;
        piece
            .set_type_and_dimensions(ElementType::F32, &[len as u64])
            .map_err(|e| e.to_string())?;
        {
            let mut map = piece.map_write().map_err(|e| e.to_string())?;
            let all = map.as_mut_slice::<f32>().map_err(|e| e.to_string())?;
            let (head, body) = all.split_at_mut(4);
            write_rect(head, rect);
            let n = rect.width() as usize * 4;
            for (row, y) in (rect.y0..rect.y1).enumerate() {
                let src = (y as usize * w + rect.x0 as usize) * 4;
                body[row * n..row * n + n].copy_from_slice(&px[src..src + n]);
            }
        }
        ctx.publish(&piece, &self.piece_name(step, from))
            .map_err(|e| format!("cannot publish a piece: {e}"))
    }
}

fn write_rect(head: &mut [f32], r: Rect) {
    for (h, v) in head.iter_mut().zip([r.x0, r.y0, r.x1, r.y1]) {
        *h = v as f32;
    }
}

/// Reads a rectangle written by [`write_rect`], checking it fits in a `w x h` image.
fn read_rect(head: &[f32], w: u32, h: u32) -> Result<Rect, String> {
    let v: Vec<u32> = head.iter().take(4).map(|&f| f as u32).collect();
    let exact = head.iter().take(4).zip(&v).all(|(&f, &u)| f == u as f32);
    let r = match v[..] {
        [x0, y0, x1, y1] => Rect { x0, y0, x1, y1 },
        _ => return Err("a piece without its rectangle".into()),
    };
    if !exact || r.x0 > r.x1 || r.y0 > r.y1 || r.x1 > w || r.y1 > h {
        return Err(format!("a piece with rectangle {head:?} outside {w}x{h}"));
    }
    Ok(r)
}

/// The initiator's front-to-back blend of direct compositing.
#[derive(Debug)]
struct Blend {
    image: Image,
    /// The next fragment index to blend.
    next: usize,
    /// Partial images that arrived before an earlier fragment's.
    pending: BTreeMap<usize, PartialImage>,
}

impl Default for Blend {
    fn default() -> Self {
        Blend {
            image: Image::transparent(0, 0),
            next: 0,
            pending: BTreeMap::new(),
        }
    }
}

/// Ray casts brick `order[i]` as fragment `i` on the host holding it, reading the voxels from
/// its Fast I/O publication in place. Made by [`SortLast::render`]; register it on every host.
#[derive(Serialize, Deserialize)]
pub struct RenderBricks {
    volume: String,
    bricks: Vec<Brick>,
    hosts: Vec<HostId>,
    order: Vec<usize>,
    camera: Camera,
    tf: TransferFunction,
    params: RenderParams,
    swap: Option<SwapFrame>,
    #[serde(skip)]
    tally: Mutex<Tally>,
    #[serde(skip)]
    blend: Mutex<Blend>,
}

impl Work for RenderBricks {
    fn work(&self, tx: &Transaction, index: usize) -> Result<Output, String> {
        let rank = *self
            .order
            .get(index)
            .ok_or_else(|| format!("no fragment {index}"))?;
        let brick = self
            .bricks
            .get(rank)
            .ok_or_else(|| format!("no brick {rank}"))?;
        let ctx = context(tx)?;
        let name = brick_name(&self.volume, rank);
        let alloc = ctx
            .get(&name)
            .map_err(|e| format!("brick {rank} is not loaded on {}: {e}", tx.host()))?;
        if alloc.dims() != brick_dims(brick) {
            return Err(format!(
                "{name} has dims {:?}, brick {rank} needs {:?}",
                alloc.dims(),
                brick_dims(brick)
            ));
        }
        let start = Instant::now();
        let part = {
            let map = alloc.map_read().map_err(|e| format!("{name}: {e}"))?;
            let voxels = map.as_slice::<f32>().map_err(|e| format!("{name}: {e}"))?;
            render_voxels(brick, voxels, &self.camera, &self.tf, &self.params)
        }
        .trimmed();
        let stats = FragmentStats {
            host: tx.host(),
            busy_ns: busy_since(start),
            fetched: 0,
            worked: true,
        };
        let image = match &self.swap {
            None => Some(part),
            Some(frame) => {
                frame.start(ctx, rank, &part)?;
                None
            }
        };
        Ok(Output { stats, image })
    }

    /// Blends fragment images front to back as soon as every fragment before them is in.
    fn take(&self, index: usize, image: PartialImage) {
        let mut b = lock(&self.blend);
        b.pending.insert(index, image);
        loop {
            let next = b.next;
            let Some(p) = b.pending.remove(&next) else {
                break;
            };
            b.image.blend_behind(&p);
            b.next += 1;
        }
    }

    fn tally(&self) -> &Mutex<Tally> {
        &self.tally
    }

    fn host_of(&self, index: usize) -> Option<HostId> {
        self.order
            .get(index)
            .and_then(|&r| self.hosts.get(r))
            .copied()
    }

    /// Direct compositing blends partial images in fragment (visibility) order.
    fn ordered(&self) -> bool {
        self.swap.is_none()
    }

    fn image_size(&self) -> (u32, u32) {
        (self.camera.width, self.camera.height)
    }
}

work_job!(RenderBricks, "fragmenta.volren.render-bricks");

/// The image a gather collects.
#[derive(Debug)]
struct Gathered(Image);

impl Default for Gathered {
    fn default() -> Self {
        Gathered(Image::transparent(0, 0))
    }
}

/// One binary-swap step: fragment `i` runs on the receiver of transfer `i` of the step,
/// fetches the sender's piece, composites it, keeps its region and publishes its piece for its
/// next step; in the last step it returns its final region. Made by [`SortLast::render`];
/// register it on every host.
#[derive(Serialize, Deserialize)]
pub struct SwapStep {
    frame: SwapFrame,
    hosts: Vec<HostId>,
    step: usize,
    #[serde(skip)]
    tally: Mutex<Tally>,
    #[serde(skip)]
    gathered: Mutex<Gathered>,
}

impl Work for SwapStep {
    fn work(&self, tx: &Transaction, index: usize) -> Result<Output, String> {
        let schedule = &self.frame.schedule;
        let (w, h) = (schedule.width, schedule.height);
        let step = schedule
            .steps
            .get(self.step)
            .ok_or_else(|| format!("no step {}", self.step))?;
        let t = step
            .transfers
            .get(index)
            .ok_or_else(|| format!("no transfer {index} in step {}", self.step))?;
        let (me, region) = (t.to, step.regions.get(t.to).copied().unwrap_or_default());
        let from_host = *self
            .hosts
            .get(t.from)
            .ok_or_else(|| format!("no host for rank {}", t.from))?;
        let ctx = context(tx)?;
        let start = Instant::now();
        let image_name = self.frame.image_name(me);
        let image = ctx
            .get(&image_name)
            .map_err(|e| format!("{image_name}: {e}"))?;
        let piece_name = self.frame.piece_name(self.step, t.from);
        let piece = tx
            .fetch(from_host, &piece_name)
            .map_err(|e| format!("cannot fetch {piece_name} from {from_host}: {e}"))?;
        let fetched = piece.size();
        let mut map = image
            .map_write()
            .map_err(|e| format!("{image_name}: {e}"))?;
        let all = map
            .as_mut_slice::<f32>()
            .map_err(|e| format!("{image_name}: {e}"))?;
        if all.len() != 4 + w as usize * h as usize * 4 {
            return Err(format!("{image_name} does not hold a {w}x{h} image"));
        }
        let (head, px) = all.split_at_mut(4);
        let bbox = read_rect(head, w, h)?;
        let rect = {
            let pm = piece.map_read().map_err(|e| format!("{piece_name}: {e}"))?;
            let pv = pm
                .as_slice::<f32>()
                .map_err(|e| format!("{piece_name}: {e}"))?;
            let (ph, body) = pv.split_at(pv.len().min(4));
            let rect = read_rect(ph, w, h)?;
            if body.len() != rect.area() * 4 {
                return Err(format!("{piece_name} does not hold {rect:?}"));
            }
            let n = rect.width() as usize * 4;
            for (row, y) in (rect.y0..rect.y1).enumerate() {
                let dst = (y as usize * w as usize + rect.x0 as usize) * 4;
                let d = px[dst..dst + n].chunks_exact_mut(4);
                for (d, s) in d.zip(body[row * n..row * n + n].chunks_exact(4)) {
                    let (dp, sp) = ([d[0], d[1], d[2], d[3]], [s[0], s[1], s[2], s[3]]);
                    let c = if t.sender_in_front {
                        over(sp, dp)
                    } else {
                        over(dp, sp)
                    };
                    d.copy_from_slice(&c);
                }
            }
            rect
        };
        drop(piece);
        let bbox = bbox.intersect(&region).union(&rect);
        write_rect(head, bbox);
        let last = self.step + 1 == schedule.steps.len();
        let out = if last {
            let keep = region.intersect(&bbox);
            let mut pixels = Vec::with_capacity(keep.area());
            for y in keep.y0..keep.y1 {
                let a = (y as usize * w as usize + keep.x0 as usize) * 4;
                let b = a + keep.width() as usize * 4;
                pixels.extend(px[a..b].chunks_exact(4).map(|p| [p[0], p[1], p[2], p[3]]));
            }
            Some(PartialImage {
                width: w,
                height: h,
                rect: keep,
                pixels,
            })
        } else {
            if let Some((next, t2)) = schedule.next_send(me, Some(self.step)) {
                self.frame
                    .publish_piece(ctx, next, me, px, bbox.intersect(&t2.region))?;
            }
            None
        };
        Ok(Output {
            stats: FragmentStats {
                host: tx.host(),
                busy_ns: busy_since(start),
                fetched,
                worked: true,
            },
            image: out,
        })
    }

    fn take(&self, _: usize, image: PartialImage) {
        lock(&self.gathered).0.paste(&image);
    }

    fn tally(&self) -> &Mutex<Tally> {
        &self.tally
    }

    fn host_of(&self, index: usize) -> Option<HostId> {
        let step = self.frame.schedule.steps.get(self.step)?;
        self.hosts.get(step.transfers.get(index)?.to).copied()
    }

    fn image_size(&self) -> (u32, u32) {
        (self.frame.schedule.width, self.frame.schedule.height)
    }
}

work_job!(SwapStep, "fragmenta.volren.swap-step");

/// Frees Fast I/O publications: fragment `i` frees `names[i]` on `hosts[i]` (names that are
/// not published are ignored). Made by [`SortLast`]; register it on every host.
#[derive(Serialize, Deserialize)]
pub struct FreePublications {
    hosts: Vec<HostId>,
    names: Vec<Vec<String>>,
    #[serde(skip)]
    tally: Mutex<Tally>,
}

impl Work for FreePublications {
    fn work(&self, tx: &Transaction, index: usize) -> Result<Output, String> {
        let ctx = context(tx)?;
        for name in self.names.get(index).into_iter().flatten() {
            match ctx.get(name) {
                Ok(a) => a.free().map_err(|e| format!("cannot free {name}: {e}"))?,
                Err(FastIoError::UnknownName(_)) => {}
                Err(e) => return Err(format!("cannot free {name}: {e}")),
            }
        }
        Ok(Output {
            stats: FragmentStats::on(tx.host()),
            image: None,
        })
    }

    fn tally(&self) -> &Mutex<Tally> {
        &self.tally
    }

    fn host_of(&self, index: usize) -> Option<HostId> {
        self.hosts.get(index).copied()
    }
}

work_job!(FreePublications, "fragmenta.volren.free-publications");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_names_round_trip() {
        for c in Compositing::ALL {
            assert_eq!(c.name().parse::<Compositing>().ok(), Some(c));
        }
        assert!(matches!(
            "swap".parse::<Compositing>(),
            Err(SortLastError::UnknownCompositing(s)) if s == "swap"
        ));
    }

    #[test]
    fn rectangles_survive_the_f32_header() {
        let r = Rect {
            x0: 3,
            y0: 0,
            x1: 16384,
            y1: 9,
        };
        let mut head = [0.0; 4];
        write_rect(&mut head, r);
        assert_eq!(read_rect(&head, 16384, 9), Ok(r));
        assert!(read_rect(&head, 100, 9).is_err());
        assert!(read_rect(&[1.5, 0.0, 2.0, 2.0], 4, 4).is_err());
        assert!(read_rect(&[1.0, 0.0], 4, 4).is_err());
    }

    #[test]
    fn hosts_are_checked() {
        let src = VolumeSource::marschner_lobb(8).unwrap();
        assert!(matches!(
            SortLast::new(src.clone(), vec![]),
            Err(SortLastError::NoHosts)
        ));
        assert!(matches!(
            SortLast::new(src.clone(), vec![HostId(1), HostId(1)]),
            Err(SortLastError::DuplicateHost(HostId(1)))
        ));
        let tiny = VolumeSource::MarschnerLobb { dims: [2, 2, 2] };
        assert!(matches!(
            SortLast::new(tiny, (0..9).map(HostId).collect()),
            Err(SortLastError::TooManyHosts { hosts: 9, .. })
        ));
        let s = SortLast::new(src, vec![HostId(3), HostId(1)]).unwrap();
        assert_eq!(s.bricks().len(), 2);
        assert!(s.brick_name(1).ends_with("-2/brick-1"));
    }
}
