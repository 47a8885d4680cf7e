//! Parsing and validation: every rule, its exact error (variant, site, line), and that nothing
//! runs and nothing is allocated when a definition is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fragmenta_fastio::{ElementType, FastIo, LocalContext};
use fragmenta_pipeline::{
    DefinitionError, ExecuteContext, Mismatch, Operator, OperatorRegistry, OperatorResult,
    Pipeline, PipelineDef, PortSpec, PortType, Ports, RunOptions, Site,
};

/// A valid two-operator pipeline; tests break one rule at a time by text replacement.
const BASE: &str = "\
api-version: 0.5.0
orchestrator: Clara
name: base
operators:
- name: producer
  container:
    image: test/producer
  input:
  - path: /input
    type: stream
    element-type: raw
  output:
  - name: values
    type: array
    element-type: float32
    shape: [1, -1]
  - name: count
    type: int32
- name: consumer
  container:
    image: test/consumer
  input:
  - from: producer
    name: values
    type: array
    element-type: float32
    shape: [1, -1]
  - from: producer
    name: count
    type: int32
  output:
  - name: report
    path: /output
    type: stream
    element-type: txt
";

static CALLS: AtomicUsize = AtomicUsize::new(0);

struct Counting(Ports);

impl Operator for Counting {
    fn ports(&self) -> Ports {
        self.0.clone()
    }
    fn prepare(&mut self, _: &fragmenta_pipeline::PrepareContext<'_>) -> OperatorResult {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn execute(&mut self, _: &ExecuteContext<'_>) -> OperatorResult {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn registry() -> OperatorRegistry {
    OperatorRegistry::new()
        .register("test/producer", || {
            Counting(
                Ports::new()
                    .input(PortSpec::payload("/input", "raw"))
                    .output(PortSpec::array("values", ElementType::F32, &[1, -1]))
                    .output(PortSpec::array("count", ElementType::I32, &[1])),
            )
        })
        .register("test/consumer", || {
            Counting(
                Ports::new()
                    .input(PortSpec::array("values", ElementType::F32, &[1, -1]))
                    .input(PortSpec::array("count", ElementType::I32, &[1]))
                    .output(PortSpec::stream("report", "/output", "txt")),
            )
        })
}

/// Parses `text`, and if it parses, binds and runs it: returns the errors, after checking that
/// no operator was called and the context holds nothing.
fn refused(text: &str) -> Vec<DefinitionError> {
    let before = CALLS.load(Ordering::SeqCst);
    let ctx = LocalContext::new(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let result = Pipeline::new_from_yaml(text, registry()).map(|p| {
        p.run(&ctx, &RunOptions::new(dir.path(), dir.path().join("out")))
            .unwrap()
    });
    let errors = match result {
        Ok(report) => panic!("accepted: {report:?}"),
        Err(e) => e.errors,
    };
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        before,
        "an operator was called"
    );
    let s = ctx.stats().unwrap();
    assert_eq!((s.allocations, s.publications, s.used), (0, 0, 0));
    errors
}

fn one(text: &str) -> DefinitionError {
    let errors = refused(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap()
}

fn replace(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

fn site(op: &str, port: Option<&str>, path: &str, line: usize) -> Site {
    Site {
        operator: Some(op.to_owned()),
        port: port.map(str::to_owned),
        path: path.to_owned(),
        line: Some(line),
    }
}

/// Helper trait so the test reads like the API a user calls.
trait FromYaml: Sized {
    fn new_from_yaml(
        text: &str,
        reg: OperatorRegistry,
    ) -> Result<Self, fragmenta_pipeline::InvalidPipeline>;
}

impl FromYaml for Pipeline {
    fn new_from_yaml(
        text: &str,
        reg: OperatorRegistry,
    ) -> Result<Self, fragmenta_pipeline::InvalidPipeline> {
        Pipeline::new(PipelineDef::parse(text)?, reg)
    }
}

#[test]
fn the_base_pipeline_is_valid_and_round_trips() {
    let def = PipelineDef::parse(BASE).unwrap();
    assert_eq!(def.operators.len(), 2);
    assert_eq!(def.deps(1), &[0]);
    assert_eq!(
        def.operators[0].outputs[1].ty,
        PortType::array(ElementType::I32, &[1])
    );
    // Round trip through the YAML writer (used to hand the definition to operator processes).
    let again = PipelineDef::parse(&def.to_yaml()).unwrap();
    assert_eq!(again.operators.len(), 2);
    assert_eq!(again.operators[1].inputs, {
        let mut i = def.operators[1].inputs.clone();
        for (a, b) in i.iter_mut().zip(&again.operators[1].inputs) {
            a.site = b.site.clone();
        }
        i
    });
}

#[test]
fn element_type_mismatch_names_both_ends_and_types() {
    let text = replace(
        "  - from: producer\n    name: values\n    type: array\n    element-type: float32",
        "  - from: producer\n    name: values\n    type: array\n    element-type: float64",
    );
    let e = one(&text);
    assert_eq!(
        e,
        DefinitionError::TypeMismatch {
            site: site(
                "consumer",
                Some("values"),
                "operators[1].input[0].element-type",
                26
            ),
            producer: site(
                "producer",
                Some("values"),
                "operators[0].output[0].element-type",
                15
            ),
            kind: Mismatch::ElementType,
            input_type: "array of float64 [1, -1]".into(),
            output_type: "array of float32 [1, -1]".into(),
        }
    );
    assert_eq!(
        e.to_string(),
        "operators[1].input[0].element-type (line 26), operator `consumer`, port `values`: \
         element-type mismatch: input is array of float64 [1, -1], but output \
         operators[0].output[0].element-type (line 15), operator `producer`, port `values` is \
         array of float32 [1, -1]"
    );
}

#[test]
fn shape_mismatch_is_refused() {
    let text = replace(
        "    element-type: float32\n    shape: [1, -1]\n  - name: count",
        "    element-type: float32\n    shape: [2, -1]\n  - name: count",
    );
    match one(&text) {
        DefinitionError::TypeMismatch {
            site,
            producer,
            kind: Mismatch::Shape,
            input_type,
            output_type,
        } => {
            assert_eq!(site.path, "operators[1].input[0].shape");
            assert_eq!(site.line, Some(27));
            assert_eq!(producer.path, "operators[0].output[0].shape");
            assert_eq!(producer.line, Some(16));
            assert_eq!(input_type, "array of float32 [1, -1]");
            assert_eq!(output_type, "array of float32 [2, -1]");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn port_type_mismatch_is_refused() {
    let text = replace(
        "  - from: producer\n    name: count\n    type: int32",
        "  - from: producer\n    name: count\n    path: /count\n    type: stream",
    );
    match one(&text) {
        DefinitionError::TypeMismatch {
            site,
            kind: Mismatch::PortType,
            input_type,
            output_type,
            ..
        } => {
            assert_eq!(site.path, "operators[1].input[1].type");
            assert_eq!(site.line, Some(31));
            assert_eq!(input_type, "stream");
            assert_eq!(output_type, "array of int32 [1]");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn unknown_from_operator_and_unknown_output() {
    let e = one(&replace(
        "  - from: producer\n    name: count",
        "  - from: nobody\n    name: count",
    ));
    assert_eq!(
        e,
        DefinitionError::UnknownOperator {
            site: site("consumer", Some("count"), "operators[1].input[1].from", 28),
            from: "nobody".into(),
        }
    );
    let e = one(&replace(
        "  - from: producer\n    name: count",
        "  - from: producer\n    name: total",
    ));
    assert_eq!(
        e,
        DefinitionError::UnknownOutput {
            site: site("consumer", Some("total"), "operators[1].input[1].name", 29),
            from: "producer".into(),
            output: "total".into(),
        }
    );
}

#[test]
fn a_cycle_lists_every_member() {
    let text = format!(
        "{BASE}- name: a\n  input:\n  - from: b\n    name: x\n    type: uint8\n  output:\n  - name: x\n    type: uint8\n\
         - name: b\n  input:\n  - from: a\n    name: x\n    type: uint8\n  output:\n  - name: x\n    type: uint8\n\
         - name: c\n  input:\n  - from: c\n    name: y\n    type: uint8\n  output:\n  - name: y\n    type: uint8\n"
    );
    let e = one(&text);
    assert_eq!(
        e,
        DefinitionError::Cycle {
            members: vec!["a".into(), "b".into(), "c".into()]
        }
    );
    assert_eq!(e.to_string(), "operators: dependency cycle through a, b, c");
}

#[test]
fn duplicate_operator_and_port_names() {
    let e = one(&replace("- name: consumer", "- name: producer"));
    match e {
        DefinitionError::DuplicateOperator { site, first } => {
            assert_eq!(site.path, "operators[1].name");
            assert_eq!(site.line, Some(19));
            assert_eq!(first, "operators[0]");
        }
        e => panic!("{e:?}"),
    }
    // The consumer's input `count` then names a missing output too: both are reported.
    let errors = refused(&replace(
        "  - name: count\n    type: int32",
        "  - name: values\n    type: int32",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        matches!(&errors[1], DefinitionError::UnknownOutput { output, .. } if output == "count")
    );
    match errors[0].clone() {
        DefinitionError::DuplicatePort { site, first } => {
            assert_eq!(site.path, "operators[0].output[1]");
            assert_eq!(site.port.as_deref(), Some("values"));
            assert_eq!(site.line, Some(17));
            assert_eq!(first, "operators[0].output[0]");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn array_without_shape_stream_without_path_array_with_path() {
    let e = one(&replace(
        "    element-type: float32\n    shape: [1, -1]\n  - name: count",
        "    element-type: float32\n  - name: count",
    ));
    assert_eq!(
        e,
        DefinitionError::ArrayWithoutShape {
            site: site("producer", Some("values"), "operators[0].output[0]", 13),
        }
    );
    let e = one(&replace(
        "  - path: /input\n    type: stream",
        "  - type: stream",
    ));
    assert_eq!(
        e,
        DefinitionError::StreamWithoutPath {
            site: Site {
                operator: Some("producer".into()),
                port: None,
                path: "operators[0].input[0]".into(),
                line: Some(9),
            },
        }
    );
    let e = one(&replace(
        "  - name: count\n    type: int32",
        "  - name: count\n    path: /count\n    type: int32",
    ));
    assert_eq!(
        e,
        DefinitionError::ArrayWithPath {
            site: site("producer", Some("count"), "operators[0].output[1].path", 18),
        }
    );
}

#[test]
fn unknown_element_type_and_typed_port_before_0_5_0() {
    let e = one(&replace(
        "    element-type: float32\n    shape: [1, -1]\n  - name: count",
        "    element-type: float128\n    shape: [1, -1]\n  - name: count",
    ));
    assert_eq!(
        e,
        DefinitionError::UnknownElementType {
            site: site(
                "producer",
                Some("values"),
                "operators[0].output[0].element-type",
                15
            ),
            element_type: "float128".into(),
        }
    );
    let errors = refused(&replace("api-version: 0.5.0", "api-version: 0.4.0"));
    // Every typed port is named: two outputs of the producer, two inputs of the consumer.
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_eq!(
        errors[0],
        DefinitionError::TypedPortNeedsApi050 {
            site: site(
                "producer",
                Some("values"),
                "operators[0].output[0].type",
                14
            ),
            api_version: "0.4.0".into(),
        }
    );
}

#[test]
fn unknown_keys_are_refused_but_x_keys_allowed() {
    let e = one(&replace(
        "  container:\n    image: test/producer",
        "  container:\n    image: test/producer\n    imagee: x",
    ));
    assert_eq!(
        e,
        DefinitionError::UnknownKey {
            site: Site {
                operator: Some("producer".into()),
                port: None,
                path: "operators[0].container.imagee".into(),
                line: Some(8),
            },
            key: "imagee".into(),
        }
    );
    let text = replace(
        "- name: consumer\n",
        "- name: consumer\n  x-fragmenta:\n    host: 2\n  x-note: anything\n",
    );
    let def = PipelineDef::parse(&text).unwrap();
    assert_eq!(def.operators[1].host, Some(2));
    let e = one(&replace(
        "- name: consumer\n",
        "- name: consumer\n  x-fragmenta:\n    hots: 2\n",
    ));
    assert!(
        matches!(&e, DefinitionError::UnknownKey { key, site } if key == "hots" && site.path == "operators[1].x-fragmenta.hots" && site.line == Some(21)),
        "{e:?}"
    );
}

#[test]
fn bad_shapes_and_payload_arrays_are_refused() {
    let e = one(&replace(
        "    shape: [1, -1]\n  - name: count",
        "    shape: [1, -2]\n  - name: count",
    ));
    assert!(
        matches!(&e, DefinitionError::InvalidShape { site, .. } if site.path == "operators[0].output[0].shape" && site.line == Some(16)),
        "{e:?}"
    );
    let e = one(&replace(
        "  - from: producer\n    name: count\n",
        "  - name: count\n",
    ));
    assert!(
        matches!(&e, DefinitionError::PayloadArray { site } if site.path == "operators[1].input[1]"),
        "{e:?}"
    );
}

#[test]
fn yaml_syntax_errors_carry_their_line() {
    let e = one("api-version: 0.5.0\nname: [unclosed\noperators: []\n");
    assert!(
        matches!(e, DefinitionError::Yaml { line: Some(_), .. }),
        "{e:?}"
    );
}

struct Wrong;

impl Operator for Wrong {
    fn ports(&self) -> Ports {
        Ports::new()
            .input(PortSpec::array("values", ElementType::F64, &[1, -1]))
            .input(PortSpec::array("count", ElementType::I32, &[1]))
            .output(PortSpec::stream("report", "/output", "txt"))
    }
    fn execute(&mut self, _: &ExecuteContext<'_>) -> OperatorResult {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn an_operator_whose_ports_disagree_is_refused_at_build() {
    let before = CALLS.load(Ordering::SeqCst);
    let reg = registry().register("test/consumer", || Wrong);
    let err = Pipeline::new(PipelineDef::parse(BASE).unwrap(), reg).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    match &err.errors[0] {
        DefinitionError::PortsDisagree { site, reason } => {
            assert_eq!(site.port.as_deref(), Some("values"));
            assert_eq!(site.path, "operators[1].input[0]");
            assert!(reason.contains("array of float32 [1, -1] in the definition, array of float64 [1, -1] in the operator"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // An image nobody registered.
    let err =
        Pipeline::new(PipelineDef::parse(BASE).unwrap(), OperatorRegistry::new()).unwrap_err();
    assert!(
        matches!(&err.errors[0], DefinitionError::Unbound { image, .. } if image == "test/producer")
    );
    assert_eq!(CALLS.load(Ordering::SeqCst), before);
}

#[test]
fn the_builder_applies_the_same_rules() {
    let ctx = Arc::new(LocalContext::new(1 << 20));
    let err = Pipeline::builder("b")
        .operator("producer", || {
            Counting(Ports::new().output(PortSpec::array("values", ElementType::F32, &[1, -1])))
        })
        .operator("consumer", || {
            Counting(Ports::new().input(PortSpec::array("values", ElementType::U8, &[1, -1])))
        })
        .from("values", "producer")
        .build()
        .unwrap_err();
    match &err.errors[0] {
        DefinitionError::TypeMismatch { site, kind, .. } => {
            assert_eq!(*kind, Mismatch::ElementType);
            assert_eq!(site.path, "operators[1].input[0].element-type");
            assert_eq!(site.line, None);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(ctx.stats().unwrap().allocations, 0);
}

#[test]
fn the_yaml_writer_quotes_any_text() {
    let text = replace(
        "- name: consumer\n",
        "- name: consumer\n  description: \"say \\\"hi\\\" \\\\ tab\\there\\nline \\u00e9 \\U0001F600 \\x1b\"\n",
    );
    let def = PipelineDef::parse(&text).unwrap();
    let d = def.operators[1].description.clone().unwrap();
    assert_eq!(d, "say \"hi\" \\ tab\there\nline \u{e9} \u{1F600} \u{1b}");
    let again = PipelineDef::parse(&def.to_yaml()).unwrap();
    assert_eq!(again.operators[1].description.as_deref(), Some(d.as_str()));
}
