//! The validated pipeline model and its YAML form (sans-IO: text in, model or errors out).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use fragmenta_fastio::{ElementType, MAX_DIMS};
use serde_norway::{Mapping, Value};

use crate::error::{DefinitionError, InvalidPipeline, Mismatch, Site};
use crate::locate::{segments, Locator};

/// Longest operator, port or pipeline name, in bytes (names become parts of Fast I/O
/// publication names).
pub const MAX_NAME_LEN: usize = 255;

/// Most operators in one pipeline.
pub const MAX_OPERATORS: usize = 1024;

/// Most inputs, or outputs, of one operator.
pub const MAX_PORTS: usize = 256;

/// A pipeline `api-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl ApiVersion {
    /// 0.5.0: the first version with typed ports (Fast I/O Variables).
    pub const TYPED: ApiVersion = ApiVersion {
        major: 0,
        minor: 5,
        patch: 0,
    };

    /// Parses `MAJOR.MINOR[.PATCH]`.
    pub fn parse(text: &str) -> Option<ApiVersion> {
        let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().unwrap_or(Some(0))?;
        parts.next().is_none().then_some(ApiVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size fixed in the definition.
    Fixed(u64),
    /// A size fixed by the producing operator at run time (`-1` or `0` in YAML).
    Dynamic,
}

/// A declared array shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape from YAML-style dimensions: `-1` or `0` is dynamic, a positive value fixed.
    /// Returns `None` for an empty shape, more than [`MAX_DIMS`] dimensions or a value below -1.
    pub fn from_dims(dims: &[i64]) -> Option<Shape> {
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return None;
        }
        dims.iter()
            .map(|&d| match d {
                -1 | 0 => Some(Dim::Dynamic),
                d if d > 0 => Some(Dim::Fixed(d as u64)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Shape)
    }

    /// The dims when every dimension is fixed (the driver pre-allocates such outputs).
    pub fn fixed(&self) -> Option<Vec<u64>> {
        self.0
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Dynamic => None,
            })
            .collect()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match d {
                Dim::Fixed(n) => write!(f, "{n}")?,
                Dim::Dynamic => f.write_str("-1")?,
            }
        }
        f.write_str("]")
    }
}

/// The type of a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortType {
    /// A Fast I/O variable (YAML `array`, `string` = uint8 `[-1]`, or a primitive = `[1]`).
    Array {
        /// Element type.
        element: ElementType,
        /// Shape.
        shape: Shape,
    },
    /// A file path on disk (YAML `stream`), with a free-form element type (`nifti`, `npz`, ...).
    Stream {
        /// The element type, if declared.
        element: Option<String>,
    },
}

impl PortType {
    /// An array type from YAML-style dims (see [`Shape::from_dims`]).
    ///
    /// # Panics
    /// If `dims` is not a valid shape (this is for operator code declaring its ports).
    pub fn array(element: ElementType, dims: &[i64]) -> PortType {
        PortType::Array {
            element,
            shape: Shape::from_dims(dims).unwrap_or_else(|| panic!("invalid shape {dims:?}")),
        }
    }

    /// A stream type of element type `element`.
    pub fn stream(element: &str) -> PortType {
        PortType::Stream {
            element: Some(element.to_owned()),
        }
    }

    fn is_array(&self) -> bool {
        matches!(self, PortType::Array { .. })
    }
}

/// The YAML name of an element type (`float32`, ...).
pub fn element_type_name(t: ElementType) -> &'static str {
    match t {
        ElementType::U8 => "uint8",
        ElementType::U16 => "uint16",
        ElementType::U32 => "uint32",
        ElementType::U64 => "uint64",
        ElementType::I8 => "int8",
        ElementType::I16 => "int16",
        ElementType::I32 => "int32",
        ElementType::I64 => "int64",
        ElementType::F16 => "float16",
        ElementType::F32 => "float32",
        ElementType::F64 => "float64",
    }
}

/// The element type of a YAML name, long (`float32`) or short (`f32`).
pub fn parse_element_type(name: &str) -> Option<ElementType> {
    Some(match name {
        "u8" | "uint8" => ElementType::U8,
        "u16" | "uint16" => ElementType::U16,
        "u32" | "uint32" => ElementType::U32,
        "u64" | "uint64" => ElementType::U64,
        "i8" | "int8" => ElementType::I8,
        "i16" | "int16" => ElementType::I16,
        "i32" | "int32" => ElementType::I32,
        "i64" | "int64" => ElementType::I64,
        "f16" | "float16" => ElementType::F16,
        "f32" | "float32" => ElementType::F32,
        "f64" | "float64" => ElementType::F64,
        _ => return None,
    })
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortType::Array { element, shape } => {
                write!(f, "array of {} {shape}", element_type_name(*element))
            }
            PortType::Stream { element: Some(e) } => write!(f, "stream of {e}"),
            PortType::Stream { element: None } => f.write_str("stream"),
        }
    }
}

/// An input port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDef {
    /// For an input `from` an operator: the name of that operator's output.
    pub name: Option<String>,
    /// The producing operator; `None` for the pipeline's payload.
    pub from: Option<String>,
    /// A stream's path (`/input`).
    pub path: Option<String>,
    /// The type.
    pub ty: PortType,
    /// Where it is defined.
    pub site: Site,
}

impl InputDef {
    /// How operator code names this input: an array by its name, a stream by its path.
    pub fn key(&self) -> &str {
        match (&self.ty, &self.path, &self.name) {
            (PortType::Stream { .. }, Some(p), _) => p,
            (_, _, Some(n)) => n,
            (_, Some(p), None) => p,
            (_, None, None) => "",
        }
    }
}

/// An output port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDef {
    /// The name other operators read it by.
    pub name: String,
    /// A stream's path (`/output`).
    pub path: Option<String>,
    /// The type.
    pub ty: PortType,
    /// Where it is defined.
    pub site: Site,
}

/// An operator's container (in fragmenta, `image` selects the Rust operator).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    /// Image name (`clara/nifti-to-fastio`).
    pub image: String,
    /// Tag.
    pub tag: Option<String>,
    /// Command.
    pub command: Vec<String>,
}

/// One operator of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDef {
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Container.
    pub container: Option<Container>,
    /// Inputs.
    pub inputs: Vec<InputDef>,
    /// Outputs.
    pub outputs: Vec<OutputDef>,
    /// `x-fragmenta: {host: N}`: the cluster host to run on.
    pub host: Option<u32>,
    /// Where it is defined.
    pub site: Site,
}

impl OperatorDef {
    /// The input whose key ([`InputDef::key`]) or name is `key`.
    pub fn input(&self, key: &str) -> Option<&InputDef> {
        self.inputs
            .iter()
            .find(|i| i.key() == key)
            .or_else(|| self.inputs.iter().find(|i| i.name.as_deref() == Some(key)))
    }

    /// The output named `name` (or, for a stream, with path `name`).
    pub fn output(&self, name: &str) -> Option<&OutputDef> {
        self.outputs.iter().find(|o| o.name == name).or_else(|| {
            self.outputs
                .iter()
                .find(|o| o.path.as_deref() == Some(name))
        })
    }
}

/// A validated pipeline definition: every rule holds, the data flow is acyclic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineDef {
    /// `api-version`.
    pub api_version: ApiVersion,
    /// `orchestrator`.
    pub orchestrator: Option<String>,
    /// `name`.
    pub name: String,
    /// `description`.
    pub description: Option<String>,
    /// Operators in definition order.
    pub operators: Vec<OperatorDef>,
    /// `deps[i]`: the operators (indices) operator `i` reads from, ascending.
    deps: Vec<Vec<usize>>,
}

impl PipelineDef {
    /// Reads and validates the definition in `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<PipelineDef, InvalidPipeline> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DefinitionError::Unreadable {
            path: path.display().to_string(),
            kind: e.kind(),
        })?;
        PipelineDef::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<PipelineDef, InvalidPipeline> {
        let value: Value = serde_norway::from_str(text).map_err(|e| DefinitionError::Yaml {
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        let mut p = Parser {
            locator: Locator::new(text),
            errors: Vec::new(),
        };
        let def = p.document(&value);
        match def {
            Some(def) if p.errors.is_empty() => PipelineDef::check(def, Some(&p.locator)),
            _ => Err(InvalidPipeline { errors: p.errors }),
        }
    }

    /// Validates a definition assembled in code (sites carry no lines).
    pub(crate) fn validated(def: PipelineDef) -> Result<PipelineDef, InvalidPipeline> {
        PipelineDef::check(def, None)
    }

    fn check(
        mut def: PipelineDef,
        locator: Option<&Locator>,
    ) -> Result<PipelineDef, InvalidPipeline> {
        let errors = check_graph(&mut def, locator);
        if errors.is_empty() {
            Ok(def)
        } else {
            Err(InvalidPipeline { errors })
        }
    }

    /// A definition assembled in code (api-version 0.5.0), to be validated.
    pub(crate) fn assembled(name: String, operators: Vec<OperatorDef>) -> PipelineDef {
        PipelineDef {
            api_version: ApiVersion::TYPED,
            orchestrator: None,
            name,
            description: None,
            operators,
            deps: Vec::new(),
        }
    }

    /// The operator named `name`, with its index.
    pub fn operator(&self, name: &str) -> Option<(usize, &OperatorDef)> {
        self.operators
            .iter()
            .enumerate()
            .find(|(_, o)| o.name == name)
    }

    /// The operators operator `i` reads from.
    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// The index of the operator an input reads from.
    pub fn producer(&self, input: &InputDef) -> Option<usize> {
        input
            .from
            .as_deref()
            .and_then(|f| self.operator(f))
            .map(|(i, _)| i)
    }

    /// The definition as YAML (what [`PipelineDef::parse`] reads back to an equal model, up to
    /// lines).
    pub fn to_yaml(&self) -> String {
        /// A YAML double-quoted scalar.
        fn q(s: &str) -> String {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        fn port(
            out: &mut String,
            name: Option<&str>,
            from: Option<&str>,
            path: Option<&str>,
            ty: &PortType,
        ) {
            let mut first = true;
            let mut field = |out: &mut String, k: &str, v: String| {
                out.push_str(if first { "  - " } else { "    " });
                first = false;
                out.push_str(&format!("{k}: {v}\n"));
            };
            if let Some(f) = from {
                field(out, "from", q(f));
            }
            if let Some(n) = name {
                field(out, "name", q(n));
            }
            if let Some(p) = path {
                field(out, "path", q(p));
            }
            match ty {
                PortType::Array { element, shape } => {
                    field(out, "type", "array".into());
                    field(out, "element-type", element_type_name(*element).into());
                    field(out, "shape", shape.to_string());
                }
                PortType::Stream { element } => {
                    field(out, "type", "stream".into());
                    if let Some(e) = element {
                        field(out, "element-type", q(e));
                    }
                }
            }
        }
        let mut out = format!("api-version: {}\n", self.api_version);
        if let Some(o) = &self.orchestrator {
            out.push_str(&format!("orchestrator: {}\n", q(o)));
        }
        out.push_str(&format!("name: {}\n", q(&self.name)));
        if let Some(d) = &self.description {
            out.push_str(&format!("description: {}\n", q(d)));
        }
        out.push_str("operators:\n");
        for op in &self.operators {
            out.push_str(&format!("- name: {}\n", q(&op.name)));
            if let Some(d) = &op.description {
                out.push_str(&format!("  description: {}\n", q(d)));
            }
            if let Some(c) = &op.container {
                out.push_str(&format!("  container:\n    image: {}\n", q(&c.image)));
                if let Some(t) = &c.tag {
                    out.push_str(&format!("    tag: {}\n", q(t)));
                }
                if !c.command.is_empty() {
                    let cmd: Vec<String> = c.command.iter().map(|s| q(s)).collect();
                    out.push_str(&format!("    command: [{}]\n", cmd.join(", ")));
                }
            }
            if let Some(h) = op.host {
                out.push_str(&format!("  x-fragmenta:\n    host: {h}\n"));
            }
            out.push_str("  input:\n");
            if op.inputs.is_empty() {
                out.truncate(out.len() - 1);
                out.push_str(" []\n");
            }
            for i in &op.inputs {
                port(
                    &mut out,
                    i.name.as_deref(),
                    i.from.as_deref(),
                    i.path.as_deref(),
                    &i.ty,
                );
            }
            out.push_str("  output:\n");
            if op.outputs.is_empty() {
                out.truncate(out.len() - 1);
                out.push_str(" []\n");
            }
            for o in &op.outputs {
                port(&mut out, Some(&o.name), None, o.path.as_deref(), &o.ty);
            }
        }
        out
    }
}

/// Converts the YAML value tree, collecting every error.
struct Parser {
    locator: Locator,
    errors: Vec<DefinitionError>,
}

impl Parser {
    fn site(&self, path: &str, operator: Option<&str>, port: Option<&str>) -> Site {
        Site {
            operator: operator.map(str::to_owned),
            port: port.map(str::to_owned),
            path: path.to_owned(),
            line: self.locator.line(&segments(path)),
        }
    }

    fn join(base: &str, key: &str) -> String {
        if base.is_empty() {
            key.to_owned()
        } else {
            format!("{base}.{key}")
        }
    }

    /// Refuses keys outside `allowed` (and not `x-`); returns the mapping's keys as strings.
    fn keys(
        &mut self,
        map: &Mapping,
        base: &str,
        allowed: &[&str],
        op: Option<&str>,
        port: Option<&str>,
    ) {
        for key in map.keys() {
            let k = match key {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            if !allowed.contains(&k.as_str()) && !k.starts_with("x-") {
                let site = self.site(&Parser::join(base, &k), op, port);
                self.errors
                    .push(DefinitionError::UnknownKey { site, key: k });
            }
        }
    }

    fn mapping<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        op: Option<&str>,
        port: Option<&str>,
    ) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            _ => {
                let site = self.site(path, op, port);
                self.errors.push(DefinitionError::InvalidValue {
                    site,
                    expected: "a mapping",
                });
                None
            }
        }
    }

    fn string(
        &mut self,
        map: &Mapping,
        base: &str,
        key: &'static str,
        required: bool,
        op: Option<&str>,
        port: Option<&str>,
    ) -> Option<String> {
        let path = Parser::join(base, key);
        match map.get(key) {
            None | Some(Value::Null) if required => {
                let site = self.site(base, op, port);
                self.errors
                    .push(DefinitionError::MissingField { site, field: key });
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(_) => {
                let site = self.site(&path, op, port);
                self.errors.push(DefinitionError::InvalidValue {
                    site,
                    expected: "a string",
                });
                None
            }
        }
    }

    fn name(
        &mut self,
        map: &Mapping,
        base: &str,
        key: &'static str,
        required: bool,
        op: Option<&str>,
        port: Option<&str>,
    ) -> Option<String> {
        let s = self.string(map, base, key, required, op, port)?;
        if s.is_empty() || s.len() > MAX_NAME_LEN || s.contains('\0') {
            let site = self.site(&Parser::join(base, key), op, port);
            self.errors.push(DefinitionError::InvalidValue {
                site,
                expected: "a name of 1 to 255 bytes",
            });
            return None;
        }
        Some(s)
    }

    fn document(&mut self, v: &Value) -> Option<PipelineDef> {
        let map = self.mapping(v, "", None, None)?;
        self.keys(
            map,
            "",
            &[
                "api-version",
                "orchestrator",
                "name",
                "description",
                "operators",
            ],
            None,
            None,
        );
        let version_text = self.string(map, "", "api-version", true, None, None);
        let api_version = version_text.as_deref().and_then(|t| {
            let v = ApiVersion::parse(t);
            if v.is_none() {
                let site = self.site("api-version", None, None);
                self.errors.push(DefinitionError::InvalidApiVersion {
                    site,
                    value: t.to_owned(),
                });
            }
            v
        });
        let orchestrator = self.string(map, "", "orchestrator", false, None, None);
        let name = self.name(map, "", "name", true, None, None);
        let description = self.string(map, "", "description", false, None, None);
        let mut operators = Vec::new();
        match map.get("operators") {
            Some(Value::Sequence(seq)) if !seq.is_empty() && seq.len() <= MAX_OPERATORS => {
                for (i, v) in seq.iter().enumerate() {
                    if let Some(op) = self.operator(v, i, api_version) {
                        operators.push(op);
                    }
                }
            }
            None | Some(Value::Null) => {
                let site = self.site("", None, None);
                self.errors.push(DefinitionError::MissingField {
                    site,
                    field: "operators",
                });
            }
            Some(_) => {
                let site = self.site("operators", None, None);
                self.errors.push(DefinitionError::InvalidValue {
                    site,
                    expected: "a list of 1 to 1024 operators",
                });
            }
        }
        Some(PipelineDef {
            api_version: api_version?,
            orchestrator,
            name: name?,
            description,
            operators,
            deps: Vec::new(),
        })
    }

    fn operator(&mut self, v: &Value, i: usize, api: Option<ApiVersion>) -> Option<OperatorDef> {
        let base = format!("operators[{i}]");
        let map = self.mapping(v, &base, None, None)?;
        let name = self.name(map, &base, "name", true, None, None);
        let op = name.as_deref();
        self.keys(
            map,
            &base,
            &["name", "description", "container", "input", "output"],
            op,
            None,
        );
        let description = self.string(map, &base, "description", false, op, None);
        let container = match map.get("container") {
            None | Some(Value::Null) => None,
            Some(c) => self.container(c, &Parser::join(&base, "container"), op),
        };
        let host = match map.get("x-fragmenta") {
            None | Some(Value::Null) => None,
            Some(x) => self.x_fragmenta(x, &Parser::join(&base, "x-fragmenta"), op),
        };
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (key, is_input) in [("input", true), ("output", false)] {
            let path = Parser::join(&base, key);
            match map.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(seq)) if seq.len() <= MAX_PORTS => {
                    for (j, pv) in seq.iter().enumerate() {
                        let pbase = format!("{path}[{j}]");
                        if is_input {
                            inputs.extend(self.input(pv, &pbase, op, api));
                        } else {
                            outputs.extend(self.output(pv, &pbase, op, api));
                        }
                    }
                }
                Some(_) => {
                    let site = self.site(&path, op, None);
                    self.errors.push(DefinitionError::InvalidValue {
                        site,
                        expected: "a list of at most 256 ports",
                    });
                }
            }
        }
        Some(OperatorDef {
            site: self.site(&base, op, None),
            name: name?,
            description,
            container,
            inputs,
            outputs,
            host,
        })
    }

    fn container(&mut self, v: &Value, base: &str, op: Option<&str>) -> Option<Container> {
        let map = self.mapping(v, base, op, None)?;
        self.keys(map, base, &["image", "tag", "command"], op, None);
        let image = self.string(map, base, "image", true, op, None);
        let tag = self.string(map, base, "tag", false, op, None);
        let command = match map.get("command") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Sequence(seq)) if seq.iter().all(Value::is_string) => seq
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                let site = self.site(&Parser::join(base, "command"), op, None);
                self.errors.push(DefinitionError::InvalidValue {
                    site,
                    expected: "a string or a list of strings",
                });
                Vec::new()
            }
        };
        Some(Container {
            image: image?,
            tag,
            command,
        })
    }

    fn x_fragmenta(&mut self, v: &Value, base: &str, op: Option<&str>) -> Option<u32> {
        let map = self.mapping(v, base, op, None)?;
        self.keys(map, base, &["host"], op, None);
        match map.get("host") {
            None | Some(Value::Null) => None,
            Some(h) => match h.as_u64().and_then(|h| u32::try_from(h).ok()) {
                Some(h) if h != u32::MAX => Some(h),
                _ => {
                    let site = self.site(&Parser::join(base, "host"), op, None);
                    self.errors.push(DefinitionError::InvalidValue {
                        site,
                        expected: "a host id (0 to 4294967294)",
                    });
                    None
                }
            },
        }
    }

    fn input(
        &mut self,
        v: &Value,
        base: &str,
        op: Option<&str>,
        api: Option<ApiVersion>,
    ) -> Option<InputDef> {
        let map = self.mapping(v, base, op, None)?;
        let name = self.name(map, base, "name", false, op, None);
        let path = self.string(map, base, "path", false, op, None);
        let port = name.clone().or_else(|| path.clone());
        let port = port.as_deref();
        self.keys(
            map,
            base,
            &["name", "from", "path", "type", "element-type", "shape"],
            op,
            port,
        );
        let from = self.name(map, base, "from", false, op, port);
        let ty = self.port_type(map, base, op, port, api, path.is_some())?;
        if ty.is_array() && name.is_none() {
            let site = self.site(base, op, port);
            self.errors.push(DefinitionError::MissingField {
                site,
                field: "name",
            });
            return None;
        }
        if from.is_some() && name.is_none() {
            let site = self.site(base, op, port);
            self.errors.push(DefinitionError::MissingField {
                site,
                field: "name",
            });
            return None;
        }
        Some(InputDef {
            site: self.site(base, op, port),
            name,
            from,
            path,
            ty,
        })
    }

    fn output(
        &mut self,
        v: &Value,
        base: &str,
        op: Option<&str>,
        api: Option<ApiVersion>,
    ) -> Option<OutputDef> {
        let map = self.mapping(v, base, op, None)?;
        let name = self.name(map, base, "name", true, op, None);
        let port = name.as_deref();
        self.keys(
            map,
            base,
            &["name", "path", "type", "element-type", "shape"],
            op,
            port,
        );
        let path = self.string(map, base, "path", false, op, port);
        let ty = self.port_type(map, base, op, port, api, path.is_some());
        Some(OutputDef {
            site: self.site(base, op, port),
            name: name?,
            path,
            ty: ty?,
        })
    }

    fn port_type(
        &mut self,
        map: &Mapping,
        base: &str,
        op: Option<&str>,
        port: Option<&str>,
        api: Option<ApiVersion>,
        has_path: bool,
    ) -> Option<PortType> {
        let kind = self.string(map, base, "type", true, op, port)?;
        let type_site = self.site(&Parser::join(base, "type"), op, port);
        let element = self.string(map, base, "element-type", false, op, port);
        let shape_value = map.get("shape").filter(|v| !v.is_null());
        let no_shape = |p: &mut Parser, what: &'static str| {
            if shape_value.is_some() {
                let site = p.site(&Parser::join(base, "shape"), op, port);
                p.errors.push(DefinitionError::InvalidValue {
                    site,
                    expected: what,
                });
            }
        };
        let ty = match kind.as_str() {
            "stream" => {
                no_shape(self, "no shape on a stream port");
                if !has_path {
                    let site = self.site(base, op, port);
                    self.errors
                        .push(DefinitionError::StreamWithoutPath { site });
                    return None;
                }
                return Some(PortType::Stream { element });
            }
            "array" => {
                let Some(element) = element else {
                    let site = self.site(base, op, port);
                    self.errors.push(DefinitionError::MissingField {
                        site,
                        field: "element-type",
                    });
                    return None;
                };
                let Some(et) = parse_element_type(&element) else {
                    let site = self.site(&Parser::join(base, "element-type"), op, port);
                    self.errors.push(DefinitionError::UnknownElementType {
                        site,
                        element_type: element,
                    });
                    return None;
                };
                let Some(shape_value) = shape_value else {
                    let site = self.site(base, op, port);
                    self.errors
                        .push(DefinitionError::ArrayWithoutShape { site });
                    return None;
                };
                let shape = self.shape(shape_value, &Parser::join(base, "shape"), op, port)?;
                PortType::Array { element: et, shape }
            }
            "string" => {
                no_shape(self, "no shape on a string port (it is uint8 [-1])");
                PortType::Array {
                    element: ElementType::U8,
                    shape: Shape(vec![Dim::Dynamic]),
                }
            }
            other => match parse_element_type(other) {
                Some(et) => {
                    no_shape(self, "no shape on a primitive port (it is [1])");
                    PortType::Array {
                        element: et,
                        shape: Shape(vec![Dim::Fixed(1)]),
                    }
                }
                None => {
                    self.errors.push(DefinitionError::UnknownPortType {
                        site: type_site,
                        port_type: other.to_owned(),
                    });
                    return None;
                }
            },
        };
        if let Some(api) = api {
            if api < ApiVersion::TYPED {
                self.errors.push(DefinitionError::TypedPortNeedsApi050 {
                    site: type_site,
                    api_version: api.to_string(),
                });
                return None;
            }
        }
        if has_path {
            let site = self.site(&Parser::join(base, "path"), op, port);
            self.errors.push(DefinitionError::ArrayWithPath { site });
            return None;
        }
        Some(ty)
    }

    fn shape(
        &mut self,
        v: &Value,
        path: &str,
        op: Option<&str>,
        port: Option<&str>,
    ) -> Option<Shape> {
        let dims: Option<Vec<i64>> = v
            .as_sequence()
            .and_then(|s| s.iter().map(Value::as_i64).collect());
        let reason = match &dims {
            None => "expected a list of integers".to_owned(),
            Some(d) if d.is_empty() => "no dimensions".to_owned(),
            Some(d) if d.len() > MAX_DIMS => format!("more than {MAX_DIMS} dimensions"),
            Some(d) => match Shape::from_dims(d) {
                Some(s) => return Some(s),
                None => "a dimension below -1 (use -1 or 0 for a run-time size)".to_owned(),
            },
        };
        let site = self.site(path, op, port);
        self.errors
            .push(DefinitionError::InvalidShape { site, reason });
        None
    }
}

/// Narrows a port's site to one of its fields.
fn field(site: &Site, key: &str, locator: Option<&Locator>) -> Site {
    let path = format!("{}.{key}", site.path);
    Site {
        line: locator.and_then(|l| l.line(&segments(&path))).or(site.line),
        path,
        ..site.clone()
    }
}

/// The graph rules: unique names, known producers and outputs, matching types, no cycle.
/// Fills `def.deps`.
fn check_graph(def: &mut PipelineDef, loc: Option<&Locator>) -> Vec<DefinitionError> {
    let mut errors = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, op) in def.operators.iter().enumerate() {
        if let Some(&first) = index.get(op.name.as_str()) {
            errors.push(DefinitionError::DuplicateOperator {
                site: field(&op.site, "name", loc),
                first: def.operators[first].site.path.clone(),
            });
        } else {
            index.insert(&op.name, i);
        }
    }
    let mut deps = vec![Vec::new(); def.operators.len()];
    for (i, op) in def.operators.iter().enumerate() {
        let mut seen: HashMap<String, &Site> = HashMap::new();
        for input in &op.inputs {
            if let Some(first) = seen.get(input.key()) {
                errors.push(DefinitionError::DuplicatePort {
                    site: input.site.clone(),
                    first: first.path.clone(),
                });
            } else {
                seen.insert(input.key().to_owned(), &input.site);
            }
        }
        let mut seen: HashMap<String, &Site> = HashMap::new();
        for output in &op.outputs {
            let keys = std::iter::once(output.name.clone())
                .chain(output.path.clone().map(|p| format!("path:{p}")));
            for key in keys {
                if let Some(first) = seen.get(&key) {
                    errors.push(DefinitionError::DuplicatePort {
                        site: output.site.clone(),
                        first: first.path.clone(),
                    });
                } else {
                    seen.insert(key, &output.site);
                }
            }
        }
        for input in &op.inputs {
            let Some(from) = &input.from else {
                if input.ty.is_array() {
                    errors.push(DefinitionError::PayloadArray {
                        site: input.site.clone(),
                    });
                }
                continue;
            };
            let Some(&p) = index.get(from.as_str()) else {
                errors.push(DefinitionError::UnknownOperator {
                    site: field(&input.site, "from", loc),
                    from: from.clone(),
                });
                continue;
            };
            let name = input.name.as_deref().unwrap_or_default();
            let Some(out) = def.operators[p].outputs.iter().find(|o| o.name == name) else {
                errors.push(DefinitionError::UnknownOutput {
                    site: field(&input.site, "name", loc),
                    from: from.clone(),
                    output: name.to_owned(),
                });
                continue;
            };
            let kind = match (&input.ty, &out.ty) {
                (a, b) if a.is_array() != b.is_array() => Some((Mismatch::PortType, "type")),
                (PortType::Array { element: a, .. }, PortType::Array { element: b, .. })
                    if a != b =>
                {
                    Some((Mismatch::ElementType, "element-type"))
                }
                (PortType::Array { shape: a, .. }, PortType::Array { shape: b, .. }) if a != b => {
                    Some((Mismatch::Shape, "shape"))
                }
                (PortType::Stream { element: a }, PortType::Stream { element: b }) if a != b => {
                    Some((Mismatch::ElementType, "element-type"))
                }
                _ => None,
            };
            if let Some((kind, key)) = kind {
                errors.push(DefinitionError::TypeMismatch {
                    site: field(&input.site, key, loc),
                    producer: field(&out.site, key, loc),
                    kind,
                    input_type: input.ty.to_string(),
                    output_type: out.ty.to_string(),
                });
                continue;
            }
            if !deps[i].contains(&p) {
                deps[i].push(p);
            }
        }
        deps[i].sort_unstable();
    }
    let members = cycle_members(&deps);
    if !members.is_empty() {
        errors.push(DefinitionError::Cycle {
            members: members
                .iter()
                .map(|&i| def.operators[i].name.clone())
                .collect(),
        });
    }
    def.deps = deps;
    errors
}

/// Every operator that can reach itself through its dependencies, ascending.
fn cycle_members(deps: &[Vec<usize>]) -> Vec<usize> {
    (0..deps.len())
        .filter(|&start| {
            let mut seen = vec![false; deps.len()];
            let mut stack: Vec<usize> = deps[start].clone();
            while let Some(n) = stack.pop() {
                if n == start {
                    return true;
                }
                if !std::mem::replace(&mut seen[n], true) {
                    stack.extend(&deps[n]);
                }
            }
            false
        })
        .collect()
}
