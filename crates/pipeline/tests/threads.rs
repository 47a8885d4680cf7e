//! Thread mode: the passthrough on real data, Fast I/O Variable rules, ordering, faults and
//! skips, timeouts, and that every run leaves the context empty.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fragmenta_fastio::{ElementType, FastIo, FastIoError, LocalContext};
use fragmenta_pipeline::passthrough::{self, NPZ_FILE, PASSTHROUGH_YAML, VERDICT_FILE};
use fragmenta_pipeline::{
    stream_dir, variable_name, ExecuteContext, Operator, OperatorResult, OperatorState, Pipeline,
    PipelineDef, PortSpec, Ports, RunOptions, VariableError,
};

fn ctx() -> LocalContext {
    LocalContext::new(256 << 20)
}

#[test]
fn passthrough_on_the_nifti_in_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (payload, dims) = support::payload(dir.path());
    let def = PipelineDef::parse(PASSTHROUGH_YAML).unwrap();
    assert_eq!(def.name, "fastio-passthrough-dynamic-pipeline");
    let pipeline = Pipeline::new(def, passthrough::registry()).unwrap();
    let ctx = ctx();
    let out = dir.path().join("out");
    let report = pipeline
        .run(&ctx, &RunOptions::new(&payload, &out))
        .unwrap();
    assert!(report.succeeded(), "{report}");
    support::assert_npz_matches(
        &stream_dir(&out, "fastio-to-npz", "numpy_npz").join(NPZ_FILE),
        &payload,
        dims,
    );
    let verdict = stream_dir(&out, "compare-original-to-output", "truth-val").join(VERDICT_FILE);
    assert_eq!(std::fs::read_to_string(verdict).unwrap(), "true");
    support::assert_empty(ctx.stats().unwrap());
}

#[test]
fn the_verdict_is_false_when_the_npz_differs() {
    // compare-input-to-npz against another volume than the one converted.
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.nii");
    passthrough::write_test_nifti(&a, [4, 3, 2]).unwrap();
    let ctx = ctx();
    let out = dir.path().join("out");
    let pipeline = Pipeline::new(
        PipelineDef::parse(PASSTHROUGH_YAML).unwrap(),
        passthrough::registry(),
    )
    .unwrap();
    assert!(pipeline
        .run(&ctx, &RunOptions::new(&a, &out))
        .unwrap()
        .succeeded());
    let npz_dir = stream_dir(&out, "fastio-to-npz", "numpy_npz");
    assert!(passthrough::npz_equals_nifti(&npz_dir, &a).unwrap());
    let b = dir.path().join("b.nii");
    passthrough::write_test_nifti(&b, [4, 3, 3]).unwrap();
    assert!(!passthrough::npz_equals_nifti(&npz_dir, &b).unwrap());
}

type Log = Arc<Mutex<Vec<String>>>;

/// Allocates its dynamic output `[1, -1, -1, -1]` after trying every wrong way, logging each
/// error; `segmentation_shape [4]` is pre-allocated.
struct Shapes {
    errors: Arc<Mutex<Vec<VariableError>>>,
    dims: Vec<u64>,
}

impl Operator for Shapes {
    fn ports(&self) -> Ports {
        Ports::new()
            .output(PortSpec::array(
                "segmentation",
                ElementType::F32,
                &[1, -1, -1, -1],
            ))
            .output(PortSpec::array(
                "segmentation_shape",
                ElementType::I32,
                &[4],
            ))
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let seg = ctx.output("segmentation")?;
        let fixed = ctx.output("segmentation_shape")?;
        let mut errors = self.errors.lock().unwrap();
        assert_eq!(
            fixed.dims(),
            Some(&[4u64][..]),
            "the fixed output is pre-allocated"
        );
        assert!(matches!(
            seg.write(),
            Err(VariableError::NotAllocated { .. })
        ));
        for bad in [&[2, 91, 109, 91][..], &[1, 91, 109], &[1, 91, 0, 91]] {
            errors.push(seg.allocate(bad).unwrap_err());
        }
        errors.push(fixed.allocate(&[4]).unwrap_err());
        seg.allocate(&self.dims)?;
        errors.push(seg.allocate(&self.dims).unwrap_err());
        let mut w = seg.write()?;
        errors.push(w.as_mut_slice::<f64>().unwrap_err());
        w.as_mut_slice::<f32>()?[0] = 42.0;
        Ok(())
    }
}

/// Records what it sees of `segmentation`.
/// What the consumer saw: element type, dims, first value.
type Seen = Arc<Mutex<Option<(ElementType, Vec<u64>, f32)>>>;

struct Sees(Seen);

impl Operator for Sees {
    fn ports(&self) -> Ports {
        Ports::new().input(PortSpec::array(
            "segmentation",
            ElementType::F32,
            &[1, -1, -1, -1],
        ))
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let seg = ctx.input("segmentation")?;
        let r = seg.read()?;
        *self.0.lock().unwrap() = Some((
            seg.element_type(),
            seg.dims().to_vec(),
            r.as_slice::<f32>()?[0],
        ));
        Ok(())
    }
}

#[test]
fn dynamic_and_fixed_shapes_follow_their_rules() {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(None));
    let (e, s) = (Arc::clone(&errors), Arc::clone(&seen));
    let pipeline = Pipeline::builder("shapes")
        .operator("producer", move || Shapes {
            errors: Arc::clone(&e),
            dims: vec![1, 91, 109, 91],
        })
        .operator("consumer", move || Sees(Arc::clone(&s)))
        .from("segmentation", "producer")
        .build()
        .unwrap();
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let report = pipeline
        .run(&ctx, &RunOptions::new(dir.path(), dir.path()))
        .unwrap();
    assert!(report.succeeded(), "{report}");
    let port = || "segmentation".to_owned();
    assert_eq!(
        *errors.lock().unwrap(),
        vec![
            VariableError::FixedDimension {
                port: port(),
                index: 0,
                declared: 1,
                given: 2
            },
            VariableError::RankMismatch {
                port: port(),
                declared: 4,
                given: 3
            },
            VariableError::ZeroDimension {
                port: port(),
                index: 2
            },
            VariableError::FixedShape {
                port: "segmentation_shape".into(),
                shape: "[4]".into()
            },
            VariableError::AlreadyAllocated {
                port: port(),
                dims: vec![1, 91, 109, 91]
            },
            VariableError::WrongElementType {
                port: port(),
                actual: ElementType::F32,
                requested: ElementType::F64
            },
        ]
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some((ElementType::F32, vec![1, 91, 109, 91], 42.0))
    );
    support::assert_empty(ctx.stats().unwrap());
}

/// Leaves its dynamic output unallocated.
struct Forgets;

impl Operator for Forgets {
    fn ports(&self) -> Ports {
        Ports::new().output(PortSpec::array(
            "segmentation",
            ElementType::F32,
            &[1, -1, -1, -1],
        ))
    }
    fn execute(&mut self, _: &ExecuteContext<'_>) -> OperatorResult {
        Ok(())
    }
}

#[test]
fn an_unallocated_dynamic_output_faults_its_operator() {
    let seen = Arc::new(Mutex::new(None));
    let s = Arc::clone(&seen);
    let pipeline = Pipeline::builder("forgets")
        .operator("producer", || Forgets)
        .operator("consumer", move || Sees(Arc::clone(&s)))
        .from("segmentation", "producer")
        .build()
        .unwrap();
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let report = pipeline
        .run(&ctx, &RunOptions::new(dir.path(), dir.path()))
        .unwrap();
    let p = report.operator("producer").unwrap();
    assert_eq!(p.state, OperatorState::Faulted);
    assert_eq!(
        p.messages,
        vec!["dynamic output `segmentation` was not allocated by execute"]
    );
    assert_eq!(
        report.operator("consumer").unwrap().state,
        OperatorState::Skipped
    );
    assert!(seen.lock().unwrap().is_none());
    support::assert_empty(ctx.stats().unwrap());
}

/// Sleeps, logs `start NAME` / `end NAME`, optionally fails or panics; one output `v` (u8 [1])
/// and inputs `v` from the operators it is connected to.
#[derive(Clone)]
struct Step {
    log: Log,
    sleep: Duration,
    inputs: Vec<String>,
    fail: Option<&'static str>,
    panic: bool,
}

impl Step {
    fn new(log: &Log, sleep_ms: u64) -> Step {
        Step {
            log: Arc::clone(log),
            sleep: Duration::from_millis(sleep_ms),
            inputs: Vec::new(),
            fail: None,
            panic: false,
        }
    }
}

impl Operator for Step {
    fn ports(&self) -> Ports {
        let mut p = Ports::new().output(PortSpec::array("v", ElementType::U8, &[1]));
        for i in &self.inputs {
            p = p.input(PortSpec::array(i, ElementType::U8, &[1]));
        }
        p
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let t0 = Instant::now();
        self.log
            .lock()
            .unwrap()
            .push(format!("start {}", ctx.operator()));
        std::thread::sleep(self.sleep);
        if self.panic {
            panic!("step {} broke", ctx.operator());
        }
        if let Some(m) = self.fail {
            return Err(m.into());
        }
        ctx.output("v")?.write()?.as_mut_slice::<u8>()?[0] = 1;
        self.log
            .lock()
            .unwrap()
            .push(format!("end {} {:?}", ctx.operator(), t0.elapsed()));
        Ok(())
    }
}

fn events(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn a_consumer_starts_after_its_producer_ends_and_independent_roots_overlap() {
    let log: Log = Arc::default();
    let slow = Step::new(&log, 300);
    let (a, b) = (slow.clone(), slow.clone());
    let consumer = Step {
        inputs: vec!["v".into()],
        ..Step::new(&log, 0)
    };
    let pipeline = Pipeline::builder("order")
        .operator("root-a", move || a.clone())
        .operator("root-b", move || b.clone())
        .operator("consumer", move || consumer.clone())
        .from("v", "root-a")
        .build()
        .unwrap();
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let report = pipeline
        .run(&ctx, &RunOptions::new(dir.path(), dir.path()))
        .unwrap();
    assert!(report.succeeded(), "{report}");
    let ev = events(&log);
    let at = |e: &str| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("{e} in {ev:?}"))
    };
    // Both roots start before either ends: they ran at the same time.
    assert!(
        at("start root-a") < at("end root-b") && at("start root-b") < at("end root-a"),
        "{ev:?}"
    );
    assert!(at("start consumer") > at("end root-a"), "{ev:?}");
    let r = |n: &str| report.operator(n).unwrap().clone();
    assert!(r("consumer").started.unwrap() >= r("root-a").ended.unwrap());
    assert!(r("root-a").started.unwrap() < r("root-b").ended.unwrap());
    assert!(r("root-b").started.unwrap() < r("root-a").ended.unwrap());
    support::assert_empty(ctx.stats().unwrap());
}

#[test]
fn a_failing_producer_skips_its_consumers_and_every_variable_is_freed() {
    let log: Log = Arc::default();
    let root = Step::new(&log, 0);
    let failing = Step {
        inputs: vec!["v".into()],
        fail: Some("boom"),
        ..Step::new(&log, 0)
    };
    let after = Step {
        inputs: vec!["v".into()],
        ..Step::new(&log, 0)
    };
    let after2 = after.clone();
    let pipeline = Pipeline::builder("fail")
        .operator("root", move || root.clone())
        .operator("failing", move || failing.clone())
        .from("v", "root")
        .operator("after", move || after.clone())
        .from("v", "failing")
        .operator("after-after", move || after2.clone())
        .from("v", "after")
        .build()
        .unwrap();
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let report = pipeline
        .run(&ctx, &RunOptions::new(dir.path(), dir.path()))
        .unwrap();
    let r = |n: &str| report.operator(n).unwrap().clone();
    assert_eq!(r("root").state, OperatorState::Completed);
    assert_eq!(r("failing").state, OperatorState::Faulted);
    assert_eq!(r("failing").messages, vec!["boom"]);
    for n in ["after", "after-after"] {
        assert_eq!(r(n).state, OperatorState::Skipped);
        assert_eq!(
            r(n).messages,
            vec!["skipped: upstream operator `failing` faulted"]
        );
    }
    assert!(!events(&log).iter().any(|e| e.contains("after")));
    // root's output was published during the run; the run freed it.
    support::assert_empty(ctx.stats().unwrap());
}

#[test]
fn a_panicking_operator_is_faulted_with_its_message() {
    let log: Log = Arc::default();
    let p = Step {
        panic: true,
        ..Step::new(&log, 0)
    };
    let pipeline = Pipeline::builder("panic")
        .operator("p", move || p.clone())
        .build()
        .unwrap();
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let report = pipeline
        .run(&ctx, &RunOptions::new(dir.path(), dir.path()))
        .unwrap();
    let r = report.operator("p").unwrap();
    assert_eq!(r.state, OperatorState::Faulted);
    assert_eq!(r.messages, vec!["panicked: step p broke"]);
    support::assert_empty(ctx.stats().unwrap());
}

#[test]
fn a_stuck_operator_times_out_and_the_run_ends() {
    let log: Log = Arc::default();
    let stuck = Step::new(&log, 3000);
    let next = Step {
        inputs: vec!["v".into()],
        ..Step::new(&log, 0)
    };
    let pipeline = Pipeline::builder("stuck")
        .operator("stuck", move || stuck.clone())
        .operator("next", move || next.clone())
        .from("v", "stuck")
        .build()
        .unwrap();
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let opts = RunOptions::new(dir.path(), dir.path()).operator_timeout(Duration::from_millis(200));
    let report = pipeline.run(&ctx, &opts).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "the run waited for the stuck operator"
    );
    let r = report.operator("stuck").unwrap();
    assert_eq!(r.state, OperatorState::Faulted);
    assert_eq!(r.messages, vec!["timed out after 200ms (operator timeout)"]);
    assert_eq!(
        report.operator("next").unwrap().state,
        OperatorState::Skipped
    );
    // The run-wide timeout does the same for a whole run.
    let opts = RunOptions::new(dir.path(), dir.path()).run_timeout(Duration::from_millis(200));
    let report = pipeline.run(&ctx, &opts).unwrap();
    assert_eq!(
        report.operator("stuck").unwrap().state,
        OperatorState::Faulted
    );
    assert!(report.operator("stuck").unwrap().messages[0]
        .starts_with("timed out: the run took longer than"));
    // Stuck threads hold only their own unpublished output; nothing of the runs is published.
    assert_eq!(ctx.stats().unwrap().publications, 0);
}

/// Tries to write its input while it runs, through a raw handle of the same context.
struct Writer(LocalContext, Arc<Mutex<Option<FastIoError>>>);

impl Operator for Writer {
    fn ports(&self) -> Ports {
        Ports::new().input(PortSpec::array("v", ElementType::U8, &[1]))
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let raw = self.0.get(&variable_name(ctx.run(), "root", "v"))?;
        *self.1.lock().unwrap() = raw.map_write().err();
        Ok(())
    }
}

#[test]
fn inputs_are_read_only_while_their_consumer_runs() {
    let log: Log = Arc::default();
    let root = Step::new(&log, 0);
    let ctx = ctx();
    let seen = Arc::new(Mutex::new(None));
    let (c, s) = (ctx.clone(), Arc::clone(&seen));
    let pipeline = Pipeline::builder("ro")
        .operator("root", move || root.clone())
        .operator("writer", move || Writer(c.clone(), Arc::clone(&s)))
        .from("v", "root")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(pipeline
        .run(&ctx, &RunOptions::new(dir.path(), dir.path()))
        .unwrap()
        .succeeded());
    assert_eq!(*seen.lock().unwrap(), Some(FastIoError::MapConflict));
    support::assert_empty(ctx.stats().unwrap());
}
