//! Sort-last volume rendering on real nodes over QUIC (one process, loopback): bricks loaded
//! into each host's Fast I/O, rendered where they live, composited directly or by binary swap;
//! the distributed image must match a single-host render of the whole volume.

mod common;

use std::path::Path;
use std::sync::Arc;

use fragmenta::*;
use fragmenta_volren::{
    binary_swap_simulate, bricks, composite_direct, load_brick, render_brick, visibility_order,
    Camera, Compositing, Frame, FreePublications, Image, JobRunner, LoadBricks, PartialImage,
    RenderBricks, RenderParams, SortLast, SortLastError, SwapStep, TransferFunction, VolumeSource,
};

/// The engine sample, where the project's shared data folder sits next to the repository.
const ENGINE: &str = "../shared/data/volumes/engine_256x256x128_uint8.raw.gz";

/// Runs sort-last jobs on a cluster handle.
struct On<'a>(&'a Cluster);

impl JobRunner for On<'_> {
    fn run<J: FragmentedJob>(&self, job: &Arc<J>, count: usize) -> Result<JobReport, ExecuteError> {
        self.0.execute(job, count)
    }
}

fn builder() -> ClusterBuilder {
    Cluster::builder()
        .register::<LoadBricks>()
        .register::<RenderBricks>()
        .register::<SwapStep>()
        .register::<FreePublications>()
}

/// `n` real nodes on loopback in this process; the first is the primary. Each serves its
/// Fast I/O context on a socket in `dir` (tests run side by side in this process).
fn cluster(dir: &Path, n: usize) -> Vec<Cluster> {
    let config = common::loopback_config(dir, n, "");
    let sockets = dir.join("fastio");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sockets)
            .unwrap();
    }
    (0..n as u32)
        .map(|h| {
            let config = config.clone();
            let socket = sockets.join(format!("host-{h}.sock"));
            std::thread::spawn(move || {
                builder()
                    .fastio_socket(socket)
                    .join_config(config, HostId(h))
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect()
}

fn camera(azimuth: f32, elevation: f32, width: u32, height: u32) -> Camera {
    Camera {
        azimuth,
        elevation,
        distance: 2.4,
        fov_y: 35.0,
        width,
        height,
    }
}

/// The whole volume rendered as one brick in this process.
fn single_host(src: &VolumeSource, cam: &Camera, tf: &TransferFunction) -> Image {
    let whole = &bricks(src.dims(), 1)[0];
    let part = render_brick(
        &load_brick(src, whole).unwrap(),
        cam,
        tf,
        &RenderParams::default(),
    );
    composite_direct(&[&part], cam.width, cam.height)
}

/// Asserts that at least 99.9% of the pixels agree within 1/255 on every channel.
fn assert_matches(what: &str, reference: &Image, got: &Image) {
    assert_eq!((got.width, got.height), (reference.width, reference.height));
    let mut ok = 0usize;
    let mut max = 0f32;
    for (p, q) in reference.pixels.iter().zip(&got.pixels) {
        let d = (0..4).map(|c| (p[c] - q[c]).abs()).fold(0f32, f32::max);
        max = max.max(d);
        ok += usize::from(d <= 1.0 / 255.0);
    }
    let frac = ok as f64 / reference.pixels.len() as f64;
    assert!(
        frac >= 0.999,
        "{what}: only {frac} of the pixels within 1/255 (max difference {max})"
    );
}

fn coverage(img: &Image) -> f64 {
    img.pixels.iter().filter(|p| p[3] > 0.01).count() as f64 / img.pixels.len() as f64
}

fn render(
    sl: &SortLast,
    on: &On<'_>,
    cam: &Camera,
    tf: &TransferFunction,
    c: Compositing,
) -> Frame {
    sl.render(on, cam, tf, &RenderParams::default(), c)
        .unwrap_or_else(|e| panic!("{} hosts, {c}, {cam:?}: {e}", sl.hosts().len()))
}

fn publications(c: &Cluster) -> u64 {
    c.fastio().stats().unwrap().publications
}

#[test]
fn distributed_image_equals_single_host_for_1_to_4_hosts_and_both_strategies() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 4);
    let on = On(&nodes[0]);
    let src = VolumeSource::marschner_lobb(32).unwrap();
    let tf = TransferFunction::preset("ct").unwrap();
    let cams = [camera(35.0, 25.0, 48, 40), camera(200.0, -40.0, 41, 37)];
    let refs: Vec<Image> = cams.iter().map(|c| single_host(&src, c, &tf)).collect();
    for r in &refs {
        assert!(coverage(r) > 0.05, "the camera sees the volume");
    }
    for n in 1..=4 {
        // Ranks on hosts 0..n of the 4-host cluster: the other hosts hold nothing.
        let hosts: Vec<HostId> = (0..n as u32).map(HostId).collect();
        let sl = SortLast::new(src.clone(), hosts).unwrap();
        let load = sl.load(&on).unwrap();
        assert_eq!(load.loaded, n);
        assert_eq!(sl.load(&on).unwrap().loaded, 0, "bricks stay published");
        for (h, node) in nodes.iter().enumerate() {
            assert_eq!(publications(node), u64::from(h < n), "host {h}, {n} hosts");
        }
        for (cam, reference) in cams.iter().zip(&refs) {
            for c in Compositing::ALL {
                let frame = render(&sl, &on, cam, &tf, c);
                assert_matches(&format!("{n} hosts, {c}, {cam:?}"), reference, &frame.image);
                assert_eq!(frame.received.len(), n);
                if n > 1 {
                    assert!(frame.busiest().1 > 0, "{n} hosts, {c}: {frame:?}");
                }
                // The frame's binary-swap allocations are freed: only the bricks remain.
                for (h, node) in nodes.iter().enumerate() {
                    assert_eq!(publications(node), u64::from(h < n), "{n} hosts, {c}");
                }
            }
        }
        sl.unload(&on).unwrap();
        assert!(nodes.iter().all(|node| publications(node) == 0));
    }
}

#[test]
fn odd_image_sizes_509x503_and_1x1() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 4);
    let on = On(&nodes[0]);
    let src = VolumeSource::marschner_lobb(24).unwrap();
    let tf = TransferFunction::preset("ct").unwrap();
    let three = SortLast::new(src.clone(), (0..3).map(HostId).collect()).unwrap();
    let four = SortLast::new(src.clone(), (0..4).map(HostId).collect()).unwrap();
    three.load(&on).unwrap();
    four.load(&on).unwrap();
    let big = camera(35.0, 25.0, 509, 503);
    let reference = single_host(&src, &big, &tf);
    for c in Compositing::ALL {
        let frame = render(&three, &on, &big, &tf, c);
        assert_matches(&format!("509x503, 3 hosts, {c}"), &reference, &frame.image);
    }
    for (az, el) in [(10.0, 10.0), (135.0, -30.0), (250.0, 60.0)] {
        let mut one = camera(az, el, 1, 1);
        one.distance = 1.2;
        let reference = single_host(&src, &one, &tf);
        assert!(reference.pixels[0][3] > 0.0, "the pixel sees the volume");
        for sl in [&three, &four] {
            for c in Compositing::ALL {
                let frame = render(sl, &on, &one, &tf, c);
                assert_matches(&format!("1x1 {one:?}, {c}"), &reference, &frame.image);
            }
        }
    }
}

/// The bytes each host receives are the plan's: the partial images (cut to their data) for
/// direct compositing, the binary-swap plan's pieces and gather otherwise, plus a few bytes of
/// framing per message.
#[test]
fn bytes_received_follow_the_compositing_plan() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 4);
    let on = On(&nodes[0]);
    let src = VolumeSource::marschner_lobb(32).unwrap();
    let tf = TransferFunction::preset("fire").unwrap();
    let cam = camera(60.0, 30.0, 64, 48);
    for n in [3, 4] {
        let sl = SortLast::new(src.clone(), (0..n).map(HostId).collect()).unwrap();
        sl.load(&on).unwrap();
        // The partial images the hosts render, cut to their non-transparent pixels.
        let parts: Vec<PartialImage> = sl
            .bricks()
            .iter()
            .map(|b| {
                render_brick(
                    &load_brick(&src, b).unwrap(),
                    &cam,
                    &tf,
                    &RenderParams::default(),
                )
                .trimmed()
            })
            .collect();
        let direct = render(&sl, &on, &cam, &tf, Compositing::Direct);
        let expected: u64 = parts[1..].iter().map(|p| p.wire_bytes()).sum();
        let got = direct.received[0].1;
        assert!(
            got >= expected && got <= expected + 64 * n as u64,
            "direct, {n} hosts: {got} bytes, partial images hold {expected}"
        );
        assert!(direct.received[1..].iter().all(|&(_, b)| b == 0));

        let order = visibility_order(sl.bricks(), &cam);
        let (_, planned) = binary_swap_simulate(&parts, &order, cam.width, cam.height).unwrap();
        let swap = render(&sl, &on, &cam, &tf, Compositing::BinarySwap);
        for (r, &(host, got)) in swap.received.iter().enumerate() {
            assert_eq!(host, HostId(r as u32));
            assert!(
                got >= planned[r] && got <= planned[r] + 64 * 8,
                "binary swap, {n} hosts, rank {r}: {got} bytes, planned {}",
                planned[r]
            );
        }
        sl.unload(&on).unwrap();
    }
}

#[test]
fn raw_volume_files_render_like_the_single_host() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2);
    let on = On(&nodes[0]);
    // A u16 volume: a ball of rising density.
    let (nx, ny, nz) = (30u32, 26u32, 22u32);
    let mut bytes = Vec::new();
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let d = [i as f32 / 29.0, j as f32 / 25.0, k as f32 / 21.0]
                    .iter()
                    .map(|v| (v - 0.5) * (v - 0.5))
                    .sum::<f32>()
                    .sqrt();
                let v = ((0.75 - d).max(0.0) / 0.75 * 65535.0) as u16;
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let path = dir.path().join("ball.raw");
    std::fs::write(&path, &bytes).unwrap();
    let src = VolumeSource::raw(&path, "30x26x22", "u16").unwrap();
    let tf = TransferFunction::preset("grayscale").unwrap();
    let cam = camera(20.0, 35.0, 40, 36);
    let reference = single_host(&src, &cam, &tf);
    assert!(coverage(&reference) > 0.05);
    let sl = SortLast::new(src, vec![HostId(0), HostId(1)]).unwrap();
    sl.load(&on).unwrap();
    for c in Compositing::ALL {
        assert_matches(
            &format!("raw u16, {c}"),
            &reference,
            &render(&sl, &on, &cam, &tf, c).image,
        );
    }
    sl.unload(&on).unwrap();

    // The engine sample of the shared data folder, when it is there.
    if !Path::new(ENGINE).exists() {
        println!("skipping the engine sample: {ENGINE} is absent");
        return;
    }
    let engine = VolumeSource::raw(ENGINE, "256x256x128", "u8").unwrap();
    let tf = TransferFunction::preset("ct").unwrap();
    let cam = camera(30.0, 30.0, 32, 32);
    let reference = single_host(&engine, &cam, &tf);
    let sl = SortLast::new(engine, vec![HostId(0), HostId(1)]).unwrap();
    sl.load(&on).unwrap();
    let frame = render(&sl, &on, &cam, &tf, Compositing::BinarySwap);
    assert_matches("engine, binary swap", &reference, &frame.image);
    sl.unload(&on).unwrap();
}

#[test]
fn errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2);
    let on = On(&nodes[0]);
    let tf = TransferFunction::preset("ct").unwrap();
    let hosts = vec![HostId(0), HostId(1)];
    // Rendering bricks that were never loaded fails on both hosts, naming the brick.
    let sl = SortLast::new(VolumeSource::marschner_lobb(16).unwrap(), hosts.clone()).unwrap();
    let cam = camera(0.0, 0.0, 8, 8);
    for c in Compositing::ALL {
        match sl.render(&on, &cam, &tf, &RenderParams::default(), c) {
            Err(SortLastError::Failed { stage, detail }) => {
                assert_eq!(stage, "render");
                assert!(
                    detail.contains("brick 0 is not loaded on host-0"),
                    "{detail}"
                );
                assert!(
                    detail.contains("brick 1 is not loaded on host-1"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // A missing raw file fails the load on every host, naming the file.
    let missing = dir.path().join("missing.raw");
    let src = VolumeSource::raw(&missing, "8x8x8", "u8").unwrap();
    match SortLast::new(src, hosts.clone()).unwrap().load(&on) {
        Err(SortLastError::Failed { stage, detail }) => {
            assert_eq!(stage, "load");
            assert!(detail.contains("missing.raw"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // A host that is not in the cluster: its fragments are skipped, and that is an error.
    let sl = SortLast::new(
        VolumeSource::marschner_lobb(16).unwrap(),
        vec![HostId(0), HostId(7)],
    )
    .unwrap();
    match sl.load(&on) {
        Err(SortLastError::Failed { detail, .. }) => assert!(detail.contains("skipped")),
        other => panic!("{other:?}"),
    }
    // Image sizes are checked before anything runs.
    let empty = camera(0.0, 0.0, 0, 8);
    assert!(matches!(
        sl.render(
            &on,
            &empty,
            &tf,
            &RenderParams::default(),
            Compositing::Direct
        ),
        Err(SortLastError::ImageSize {
            width: 0,
            height: 8
        })
    ));
}

#[test]
fn the_embedded_one_host_cluster_renders_alone() {
    let node = builder().embedded().unwrap();
    let on = On(&node);
    let src = VolumeSource::marschner_lobb(24).unwrap();
    let tf = TransferFunction::preset("fire").unwrap();
    let cam = camera(120.0, 20.0, 33, 31);
    let sl = SortLast::new(src.clone(), node.hosts()).unwrap();
    sl.load(&on).unwrap();
    let reference = single_host(&src, &cam, &tf);
    for c in Compositing::ALL {
        let frame = render(&sl, &on, &cam, &tf, c);
        assert_eq!(
            frame.image, reference,
            "one host, {c}: the same computation"
        );
        assert_eq!(frame.received, vec![(HostId(0), 0)]);
    }
}

/// The example's binary (cargo builds examples for `cargo test`).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder")
        .join("examples")
        .join(name);
    assert!(path.exists(), "example not built at {}", path.display());
    path
}

/// Runs the example the way a user does: it starts its own hosts as processes, prints the
/// timing line and writes the PNG; bad arguments are refused with the argument's name.
#[test]
fn the_example_starts_its_hosts_and_writes_the_picture() {
    let dir = tempfile::tempdir().unwrap();
    for (hosts, composite) in [("3", "binary-swap"), ("1", "direct")] {
        let png = dir.path().join(format!("hosts-{hosts}.png"));
        let out = std::process::Command::new(example("sort_last"))
            .args(["--size", "24", "--image", "40x32", "--tf", "fire"])
            .args(["--hosts", hosts, "--composite", composite])
            .arg("--out")
            .arg(&png)
            .env_remove("FRAGMENTA_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{hosts} hosts: {text}");
        assert!(text.contains(&format!("on {hosts} host(s)")), "{text}");
        assert!(
            text.contains("load ") && text.contains("| busiest host host-0 received"),
            "{text}"
        );
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (40, 32));
        let background = [0x10, 0x12, 0x18];
        let lit = buf.chunks_exact(3).filter(|p| *p != background).count();
        assert!(
            lit > 40 * 32 / 10,
            "{hosts} hosts: the volume covers {lit} pixels"
        );
    }
    let bad = std::process::Command::new(example("sort_last"))
        .args(["--image", "40"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--image"));
}

/// Arguments the example refuses before it renders anything: a NaN angle, and an output
/// folder that does not exist (said at once, not after the whole render).
#[test]
fn the_example_checks_its_angles_and_output_before_rendering() {
    for azimuth in ["nan", "inf", "-inf"] {
        let bad = std::process::Command::new(example("sort_last"))
            .args(["--hosts", "1", "--size", "8"])
            .arg(format!("--azimuth={azimuth}"))
            .env_remove("FRAGMENTA_CONFIG")
            .output()
            .unwrap();
        assert!(!bad.status.success(), "--azimuth {azimuth} accepted");
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("--azimuth"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder/out.png");
    let bad = std::process::Command::new(example("sort_last"))
        .args(["--hosts", "2", "--size", "8", "--image", "8x8", "--out"])
        .arg(&missing)
        .env_remove("FRAGMENTA_CONFIG")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let text =
        String::from_utf8_lossy(&bad.stdout).into_owned() + &String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("--out") && text.contains("does not exist"),
        "{text}"
    );
    // Refused before any host started or anything was rendered.
    assert!(
        !text.contains("[host-") && !text.contains("load "),
        "{text}"
    );
}
