//! The errors of the crate: definition errors (found before anything runs), variable errors
//! (typed access to Fast I/O Variables inside an operator) and run errors.

use std::fmt;

use fragmenta_fastio::{ElementType, FastIoError};

/// Where in a pipeline definition an element is: the operator and port it belongs to, its path
/// in the document (`operators[1].input[0].shape`) and its YAML line (1-based), when known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Site {
    /// The operator's name, when the element belongs to one (and it has a name).
    pub operator: Option<String>,
    /// The port's name (or stream path), when the element belongs to a port.
    pub port: Option<String>,
    /// Path of the element in the document, e.g. `operators[1].input[0].shape`.
    pub path: String,
    /// 1-based line of the element in the YAML text (`None` for a pipeline built in code, or
    /// where the text does not show it in block style).
    pub line: Option<usize>,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        match (&self.operator, &self.port) {
            (Some(op), Some(port)) => write!(f, ", operator `{op}`, port `{port}`"),
            (Some(op), None) => write!(f, ", operator `{op}`"),
            _ => Ok(()),
        }
    }
}

/// Which part of two connected port types differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// One end is an `array` (a Fast I/O variable), the other a `stream` (a file path).
    PortType,
    /// The element types differ.
    ElementType,
    /// The shapes differ (rank, a fixed dimension, or fixed against dynamic).
    Shape,
}

/// A rule of the definition that is broken. Every variant names where ([`Site`]); a
/// connection mismatch names both ends and both types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The definition file cannot be read.
    #[error("{path}: cannot read: {kind}")]
    Unreadable {
        /// The file.
        path: String,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
    /// The text is not YAML (or not a mapping at the top).
    #[error("{}: invalid YAML: {message}", line.map_or_else(|| "document".to_owned(), |l| format!("line {l}")))]
    Yaml {
        /// Line of the syntax error, when the parser reports it.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A key the format does not define (keys starting with `x-` are extensions and allowed).
    #[error("{site}: unknown key `{key}`")]
    UnknownKey {
        /// The mapping holding the key.
        site: Site,
        /// The key.
        key: String,
    },
    /// A required field is absent.
    #[error("{site}: missing `{field}`")]
    MissingField {
        /// The element lacking the field.
        site: Site,
        /// The field's key.
        field: &'static str,
    },
    /// A value has the wrong YAML type or form.
    #[error("{site}: expected {expected}")]
    InvalidValue {
        /// The value.
        site: Site,
        /// What was expected there.
        expected: &'static str,
    },
    /// `api-version` is not a version `MAJOR.MINOR[.PATCH]`.
    #[error("{site}: invalid api-version {value:?} (expected MAJOR.MINOR.PATCH)")]
    InvalidApiVersion {
        /// The `api-version` field.
        site: Site,
        /// Its value.
        value: String,
    },
    /// A typed port (`array`, `string` or a primitive) in a pipeline of api-version below
    /// 0.5.0, where Fast I/O Variables do not exist.
    #[error(
        "{site}: typed port needs api-version 0.5.0 or higher, the pipeline declares {api_version}"
    )]
    TypedPortNeedsApi050 {
        /// The port's `type` field.
        site: Site,
        /// The declared api-version.
        api_version: String,
    },
    /// A `type` that is neither `array`, `string`, `stream` nor a primitive.
    #[error("{site}: unknown port type {port_type:?}")]
    UnknownPortType {
        /// The port's `type` field.
        site: Site,
        /// The value.
        port_type: String,
    },
    /// An `element-type` of an array that is not a primitive type.
    #[error("{site}: unknown element type {element_type:?} (expected one of uint8..uint64, int8..int64, float16, float32, float64 or their short forms)")]
    UnknownElementType {
        /// The `element-type` field.
        site: Site,
        /// The value.
        element_type: String,
    },
    /// An `array` port without `shape`.
    #[error("{site}: array port without a shape")]
    ArrayWithoutShape {
        /// The port.
        site: Site,
    },
    /// A shape that is empty or has a dimension below -1.
    #[error("{site}: invalid shape: {reason}")]
    InvalidShape {
        /// The `shape` field.
        site: Site,
        /// Why.
        reason: String,
    },
    /// A `stream` port without `path`.
    #[error("{site}: stream port without a path")]
    StreamWithoutPath {
        /// The port.
        site: Site,
    },
    /// An `array` (Fast I/O variable) port with a `path`: variables live in memory.
    #[error("{site}: array port with a path (Fast I/O variables have no path)")]
    ArrayWithPath {
        /// The port's `path` field.
        site: Site,
    },
    /// An array input without `from`: only streams come from the payload.
    #[error("{site}: array input without `from` (only stream inputs read the payload)")]
    PayloadArray {
        /// The input.
        site: Site,
    },
    /// Two operators with one name.
    #[error("{site}: duplicate operator name (first at {first})")]
    DuplicateOperator {
        /// The second operator's `name`.
        site: Site,
        /// Path of the first.
        first: String,
    },
    /// Two inputs or two outputs of one operator with one name (or one stream path).
    #[error("{site}: duplicate port (first at {first})")]
    DuplicatePort {
        /// The second port.
        site: Site,
        /// Path of the first.
        first: String,
    },
    /// `from` names an operator the pipeline does not have.
    #[error("{site}: `from` names unknown operator `{from}`")]
    UnknownOperator {
        /// The input's `from` field.
        site: Site,
        /// The value.
        from: String,
    },
    /// `name` names an output the `from` operator does not have.
    #[error("{site}: operator `{from}` has no output `{output}`")]
    UnknownOutput {
        /// The input's `name` field.
        site: Site,
        /// The producing operator.
        from: String,
        /// The missing output.
        output: String,
    },
    /// A connection whose two ends have different types.
    #[error("{site}: {what} mismatch: input is {input_type}, but output {producer} is {output_type}", what = match kind { Mismatch::PortType => "port type", Mismatch::ElementType => "element-type", Mismatch::Shape => "shape" })]
    TypeMismatch {
        /// The consuming input's differing field.
        site: Site,
        /// The producing output's differing field.
        producer: Site,
        /// What differs.
        kind: Mismatch,
        /// The input's type.
        input_type: String,
        /// The output's type.
        output_type: String,
    },
    /// The data flow has a cycle; `members` lists every operator on one, in definition order.
    #[error("operators: dependency cycle through {}", members.join(", "))]
    Cycle {
        /// The operators on the cycle(s).
        members: Vec<String>,
    },
    /// An operator of the definition has no Rust operator bound to it.
    #[error("{site}: no operator registered for image {image:?} or name")]
    Unbound {
        /// The operator.
        site: Site,
        /// Its container image (empty when it has none).
        image: String,
    },
    /// A Rust operator's declared ports disagree with the definition.
    #[error("{site}: the operator's declared ports disagree: {reason}")]
    PortsDisagree {
        /// The port of the definition (or the operator, for a declared port it lacks).
        site: Site,
        /// How.
        reason: String,
    },
}

impl DefinitionError {
    /// Where the error is, when it names one place.
    pub fn site(&self) -> Option<&Site> {
        use DefinitionError::*;
        match self {
            Unreadable { .. } | Yaml { .. } | Cycle { .. } => None,
            UnknownKey { site, .. }
            | MissingField { site, .. }
            | InvalidValue { site, .. }
            | InvalidApiVersion { site, .. }
            | TypedPortNeedsApi050 { site, .. }
            | UnknownPortType { site, .. }
            | UnknownElementType { site, .. }
            | ArrayWithoutShape { site }
            | InvalidShape { site, .. }
            | StreamWithoutPath { site }
            | ArrayWithPath { site }
            | PayloadArray { site }
            | DuplicateOperator { site, .. }
            | DuplicatePort { site, .. }
            | UnknownOperator { site, .. }
            | UnknownOutput { site, .. }
            | TypeMismatch { site, .. }
            | Unbound { site, .. }
            | PortsDisagree { site, .. } => Some(site),
        }
    }
}

/// Every rule a definition breaks, in document order. Nothing runs and nothing is allocated
/// for a definition with errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct InvalidPipeline {
    /// The errors (at least one).
    pub errors: Vec<DefinitionError>,
}

impl From<DefinitionError> for InvalidPipeline {
    fn from(e: DefinitionError) -> Self {
        InvalidPipeline { errors: vec![e] }
    }
}

/// Misuse of a Fast I/O Variable inside an operator (typed, so tests can assert it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VariableError {
    /// The operator has no such input or output (array ports by name, streams by name or path).
    #[error("operator `{operator}` has no {kind} `{port}`")]
    NoSuchPort {
        /// The operator.
        operator: String,
        /// `input`, `output`, `input stream` or `output stream`.
        kind: &'static str,
        /// The name asked for.
        port: String,
    },
    /// `allocate` on an output whose shape is fixed: the driver allocated it already.
    #[error("output `{port}` has the fixed shape {shape}: it is pre-allocated, not allocated by the operator")]
    FixedShape {
        /// The output.
        port: String,
        /// Its declared shape.
        shape: String,
    },
    /// A second `allocate` of a dynamic output.
    #[error("output `{port}` is already allocated with dims {dims:?}")]
    AlreadyAllocated {
        /// The output.
        port: String,
        /// The dims of the first allocation.
        dims: Vec<u64>,
    },
    /// `allocate` with another number of dimensions than the declared shape.
    #[error("output `{port}` has rank {declared}, allocate gave {given} dims")]
    RankMismatch {
        /// The output.
        port: String,
        /// Declared rank.
        declared: usize,
        /// Dims given.
        given: usize,
    },
    /// `allocate` changing a fixed dimension.
    #[error("output `{port}` dimension {index} is fixed at {declared}, allocate gave {given}")]
    FixedDimension {
        /// The output.
        port: String,
        /// Index of the dimension.
        index: usize,
        /// Its declared size.
        declared: u64,
        /// The size given.
        given: u64,
    },
    /// `allocate` with a dynamic dimension of 0.
    #[error("output `{port}` dimension {index} is 0: a run-time dimension must be positive")]
    ZeroDimension {
        /// The output.
        port: String,
        /// Index of the dimension.
        index: usize,
    },
    /// The array would not fit in memory (`u64` overflow).
    #[error("output `{port}` dims {dims:?} overflow the addressable size")]
    TooLarge {
        /// The output.
        port: String,
        /// The dims given.
        dims: Vec<u64>,
    },
    /// A dynamic output read or written before `allocate`.
    #[error("output `{port}` is not allocated yet")]
    NotAllocated {
        /// The output.
        port: String,
    },
    /// A typed view of another element type than the port's.
    #[error("port `{port}` holds {actual:?}, not {requested:?}")]
    WrongElementType {
        /// The port.
        port: String,
        /// The declared element type.
        actual: ElementType,
        /// The type asked for.
        requested: ElementType,
    },
    /// The Fast I/O context refused an operation (e.g. [`FastIoError::MapConflict`]).
    #[error("port `{port}`: {source}")]
    FastIo {
        /// The port.
        port: String,
        /// The context's error.
        #[source]
        source: FastIoError,
    },
}

/// Why a run could not start (a run that starts always returns a report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The definition is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidPipeline),
    /// The payload path does not exist.
    #[error("payload {0} does not exist")]
    NoPayload(String),
    /// The output directory cannot be created.
    #[error("output directory {path}: {source}")]
    Output {
        /// The directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The Fast I/O context could not be served or reached.
    #[error("Fast I/O context: {0}")]
    FastIo(#[from] FastIoError),
    /// An operator process could not be started.
    #[error("cannot start operator process {command}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
