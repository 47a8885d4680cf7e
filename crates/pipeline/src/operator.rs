//! Operators in Rust: the life-cycle trait, declared ports, the registry that binds a
//! definition's operators to Rust code, and the Fast I/O Variables an operator sees.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fragmenta_fastio::{Allocation, Element, ElementType, FastIo, ReadGuard, WriteGuard};

use crate::error::{DefinitionError, InvalidPipeline, VariableError};
use crate::model::{Dim, OperatorDef, PipelineDef, PortType, Shape};

/// What an operator's code returns: any error (its message becomes the operator's fault).
pub type OperatorResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A declared port of a Rust operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The name (an array port, an output, or a stream input read from another operator's
    /// output of that name).
    pub name: Option<String>,
    /// A stream's path.
    pub path: Option<String>,
    /// The type.
    pub ty: PortType,
}

impl PortSpec {
    /// An array port (input or output) named `name`; `dims` as in YAML (`-1` dynamic).
    pub fn array(name: &str, element: ElementType, dims: &[i64]) -> PortSpec {
        PortSpec {
            name: Some(name.to_owned()),
            path: None,
            ty: PortType::array(element, dims),
        }
    }

    /// A stream input at `path` read from the payload.
    pub fn payload(path: &str, element: &str) -> PortSpec {
        PortSpec {
            name: None,
            path: Some(path.to_owned()),
            ty: PortType::stream(element),
        }
    }

    /// A stream port at `path` named `name` (an output, or an input reading output `name`).
    pub fn stream(name: &str, path: &str, element: &str) -> PortSpec {
        PortSpec {
            name: Some(name.to_owned()),
            path: Some(path.to_owned()),
            ty: PortType::stream(element),
        }
    }

    fn key(&self) -> &str {
        match (&self.ty, &self.path, &self.name) {
            (PortType::Stream { .. }, Some(p), _) => p,
            (_, _, Some(n)) => n,
            (_, Some(p), None) => p,
            (_, None, None) => "",
        }
    }
}

/// The ports an operator declares: checked against the definition when a pipeline is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    /// Inputs.
    pub inputs: Vec<PortSpec>,
    /// Outputs.
    pub outputs: Vec<PortSpec>,
}

impl Ports {
    /// No ports.
    pub fn new() -> Ports {
        Ports::default()
    }

    /// Adds an input.
    pub fn input(mut self, spec: PortSpec) -> Ports {
        self.inputs.push(spec);
        self
    }

    /// Adds an output.
    pub fn output(mut self, spec: PortSpec) -> Ports {
        self.outputs.push(spec);
        self
    }
}

/// What an operator sees before its inputs are ready.
#[derive(Debug)]
pub struct PrepareContext<'a> {
    pub(crate) operator: &'a str,
    pub(crate) run: &'a str,
}

impl PrepareContext<'_> {
    /// The operator's name in the pipeline.
    pub fn operator(&self) -> &str {
        self.operator
    }

    /// The run's id.
    pub fn run(&self) -> &str {
        self.run
    }
}

/// A Rust operator with Clara's life cycle. The same code runs in every mode (threads,
/// processes, cluster hosts).
pub trait Operator: Send {
    /// The ports the operator works with; a definition binding it must declare the same.
    fn ports(&self) -> Ports;

    /// Called once the operator is started, before its inputs are ready (load a model, open
    /// files). An error faults the operator. Default: nothing.
    fn prepare(&mut self, ctx: &PrepareContext<'_>) -> OperatorResult {
        let _ = ctx;
        Ok(())
    }

    /// Called once every operator it reads from has completed. Its outputs are published when
    /// it returns `Ok`; every dynamic output must be allocated by then.
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult;

    /// Called last, whether `execute` ran, failed, or was skipped. Default: nothing.
    fn cleanup(&mut self) {}
}

type Factory = Arc<dyn Fn() -> Box<dyn Operator> + Send + Sync>;

/// Binds operators of a definition to Rust operators: by container image (`clara/x`, with or
/// without `:tag`), else by operator name.
#[derive(Clone, Default)]
pub struct OperatorRegistry {
    factories: HashMap<String, Factory>,
}

impl fmt::Debug for OperatorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.factories.keys().collect();
        keys.sort();
        f.debug_struct("OperatorRegistry")
            .field("keys", &keys)
            .finish()
    }
}

impl OperatorRegistry {
    /// An empty registry.
    pub fn new() -> OperatorRegistry {
        OperatorRegistry::default()
    }

    /// Registers `make` under `key` (an image or an operator name).
    pub fn register<O, F>(mut self, key: &str, make: F) -> OperatorRegistry
    where
        O: Operator + 'static,
        F: Fn() -> O + Send + Sync + 'static,
    {
        self.factories.insert(
            key.to_owned(),
            Arc::new(move || Box::new(make()) as Box<dyn Operator>),
        );
        self
    }

    pub(crate) fn factory(&self, op: &OperatorDef) -> Option<&Factory> {
        let by_image = op.container.as_ref().and_then(|c| {
            let tagged = c.tag.as_ref().map(|t| format!("{}:{t}", c.image));
            tagged
                .and_then(|t| self.factories.get(&t))
                .or_else(|| self.factories.get(&c.image))
        });
        by_image.or_else(|| self.factories.get(&op.name))
    }

    /// A new instance of the operator bound to `op`.
    pub(crate) fn instantiate(&self, op: &OperatorDef) -> Option<Box<dyn Operator>> {
        self.factory(op).map(|f| f())
    }

    /// Checks that every operator of `def` is bound and declares the definition's ports.
    pub fn check(&self, def: &PipelineDef) -> Result<(), InvalidPipeline> {
        let mut errors = Vec::new();
        for op in &def.operators {
            let Some(instance) = self.instantiate(op) else {
                errors.push(DefinitionError::Unbound {
                    site: op.site.clone(),
                    image: op
                        .container
                        .as_ref()
                        .map(|c| c.image.clone())
                        .unwrap_or_default(),
                });
                continue;
            };
            errors.extend(ports_agree(op, &instance.ports()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidPipeline { errors })
        }
    }
}

/// Compares declared ports with the definition's, naming each port that differs.
fn ports_agree(op: &OperatorDef, ports: &Ports) -> Vec<DefinitionError> {
    let mut errors = Vec::new();
    let disagree =
        |site: crate::Site, reason: String| DefinitionError::PortsDisagree { site, reason };
    for input in &op.inputs {
        match ports.inputs.iter().find(|p| p.key() == input.key()) {
            None => errors.push(disagree(
                input.site.clone(),
                format!("input `{}` is not declared by the operator", input.key()),
            )),
            Some(p) if p.ty != input.ty => errors.push(disagree(
                input.site.clone(),
                format!(
                    "input `{}` is {} in the definition, {} in the operator",
                    input.key(),
                    input.ty,
                    p.ty
                ),
            )),
            Some(p) if input.from.is_some() && p.name != input.name => errors.push(disagree(
                input.site.clone(),
                format!(
                    "input `{}` reads output {:?} in the definition, {:?} in the operator",
                    input.key(),
                    input.name,
                    p.name
                ),
            )),
            Some(_) => {}
        }
    }
    for p in &ports.inputs {
        if op.inputs.iter().all(|i| i.key() != p.key()) {
            let mut site = op.site.clone();
            site.port = Some(p.key().to_owned());
            errors.push(disagree(
                site,
                format!("declared input `{}` is not in the definition", p.key()),
            ));
        }
    }
    for output in &op.outputs {
        match ports
            .outputs
            .iter()
            .find(|p| p.name.as_deref() == Some(&output.name))
        {
            None => errors.push(disagree(
                output.site.clone(),
                format!("output `{}` is not declared by the operator", output.name),
            )),
            Some(p) if p.ty != output.ty => errors.push(disagree(
                output.site.clone(),
                format!(
                    "output `{}` is {} in the definition, {} in the operator",
                    output.name, output.ty, p.ty
                ),
            )),
            Some(_) => {}
        }
    }
    for p in &ports.outputs {
        if op
            .outputs
            .iter()
            .all(|o| Some(o.name.as_str()) != p.name.as_deref())
        {
            let key = p.name.clone().unwrap_or_default();
            let mut site = op.site.clone();
            site.port = Some(key.clone());
            errors.push(disagree(
                site,
                format!("declared output `{key}` is not in the definition"),
            ));
        }
    }
    errors
}

/// A read-only Fast I/O Variable: an output of an upstream operator. While the operator runs,
/// the driver holds a read map on it, so any write map on the memory (in any process) fails
/// with [`fragmenta_fastio::FastIoError::MapConflict`].
#[derive(Debug)]
pub struct Input {
    pub(crate) port: String,
    pub(crate) element: ElementType,
    pub(crate) alloc: Allocation,
}

impl Input {
    /// The port's name.
    pub fn name(&self) -> &str {
        &self.port
    }

    /// The element type (the declared one; the producer's publication carries the same).
    pub fn element_type(&self) -> ElementType {
        self.element
    }

    /// The dims the producer fixed.
    pub fn dims(&self) -> &[u64] {
        self.alloc.dims()
    }

    /// Maps the variable for reading.
    pub fn read(&self) -> Result<View<'_>, VariableError> {
        let guard = self
            .alloc
            .map_read()
            .map_err(|source| VariableError::FastIo {
                port: self.port.clone(),
                source,
            })?;
        Ok(View {
            port: &self.port,
            element: self.element,
            guard,
        })
    }
}

/// A read map of a variable.
#[derive(Debug)]
pub struct View<'a> {
    port: &'a str,
    element: ElementType,
    guard: ReadGuard<'a>,
}

impl View<'_> {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.guard.as_bytes()
    }

    /// The elements, if the port's element type is `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], VariableError> {
        check_type::<T>(self.port, self.element)?;
        self.guard
            .as_slice()
            .map_err(|source| VariableError::FastIo {
                port: self.port.to_owned(),
                source,
            })
    }
}

/// A write map of an output variable.
#[derive(Debug)]
pub struct ViewMut<'a> {
    port: &'a str,
    element: ElementType,
    guard: WriteGuard<'a>,
}

impl ViewMut<'_> {
    /// The bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.guard.as_mut_bytes()
    }

    /// The elements, if the port's element type is `T`.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T], VariableError> {
        check_type::<T>(self.port, self.element)?;
        self.guard
            .as_mut_slice()
            .map_err(|source| VariableError::FastIo {
                port: self.port.to_owned(),
                source,
            })
    }
}

fn check_type<T: Element>(port: &str, element: ElementType) -> Result<(), VariableError> {
    if T::TYPE == element {
        Ok(())
    } else {
        Err(VariableError::WrongElementType {
            port: port.to_owned(),
            actual: element,
            requested: T::TYPE,
        })
    }
}

/// A read/write Fast I/O Variable the operator produces. A fixed shape is allocated before
/// `execute`; a dynamic one is allocated once by the operator with [`Output::allocate`].
pub struct Output {
    pub(crate) port: String,
    pub(crate) element: ElementType,
    pub(crate) shape: Shape,
    pub(crate) alloc: OnceLock<Allocation>,
    pub(crate) ctx: Arc<dyn FastIo>,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("port", &self.port)
            .field("element", &self.element)
            .field("shape", &self.shape)
            .field("alloc", &self.alloc.get())
            .finish()
    }
}

impl Output {
    pub(crate) fn new(
        port: &str,
        element: ElementType,
        shape: Shape,
        ctx: Arc<dyn FastIo>,
    ) -> Result<Output, VariableError> {
        let out = Output {
            port: port.to_owned(),
            element,
            alloc: OnceLock::new(),
            ctx,
            shape,
        };
        if let Some(dims) = out.shape.fixed() {
            out.create(&dims)?;
        }
        Ok(out)
    }

    fn create(&self, dims: &[u64]) -> Result<(), VariableError> {
        let size = dims
            .iter()
            .try_fold(self.element.size_bytes(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| VariableError::TooLarge {
                port: self.port.clone(),
                dims: dims.to_vec(),
            })?;
        let fastio = |source| VariableError::FastIo {
            port: self.port.clone(),
            source,
        };
        let mut alloc = self.ctx.create(size).map_err(fastio)?;
        alloc
            .set_type_and_dimensions(self.element, dims)
            .map_err(fastio)?;
        self.alloc
            .set(alloc)
            .map_err(|_| VariableError::AlreadyAllocated {
                port: self.port.clone(),
                dims: dims.to_vec(),
            })
    }

    /// The port's name.
    pub fn name(&self) -> &str {
        &self.port
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.element
    }

    /// The declared shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dims, once allocated.
    pub fn dims(&self) -> Option<&[u64]> {
        self.alloc.get().map(Allocation::dims)
    }

    /// Allocates a dynamic output with `dims`: same rank as the declared shape, fixed
    /// dimensions unchanged, run-time dimensions positive; once.
    pub fn allocate(&self, dims: &[u64]) -> Result<(), VariableError> {
        let port = || self.port.clone();
        if self.shape.fixed().is_some() {
            return Err(VariableError::FixedShape {
                port: port(),
                shape: self.shape.to_string(),
            });
        }
        if let Some(a) = self.alloc.get() {
            return Err(VariableError::AlreadyAllocated {
                port: port(),
                dims: a.dims().to_vec(),
            });
        }
        if dims.len() != self.shape.0.len() {
            return Err(VariableError::RankMismatch {
                port: port(),
                declared: self.shape.0.len(),
                given: dims.len(),
            });
        }
        for (index, (d, &given)) in self.shape.0.iter().zip(dims).enumerate() {
            match *d {
                Dim::Fixed(declared) if declared != given => {
                    return Err(VariableError::FixedDimension {
                        port: port(),
                        index,
                        declared,
                        given,
                    })
                }
                Dim::Dynamic if given == 0 => {
                    return Err(VariableError::ZeroDimension {
                        port: port(),
                        index,
                    })
                }
                _ => {}
            }
        }
        self.create(dims)
    }

    fn allocation(&self) -> Result<&Allocation, VariableError> {
        self.alloc.get().ok_or_else(|| VariableError::NotAllocated {
            port: self.port.clone(),
        })
    }

    /// Maps the variable for writing.
    pub fn write(&self) -> Result<ViewMut<'_>, VariableError> {
        let guard = self
            .allocation()?
            .map_write()
            .map_err(|source| VariableError::FastIo {
                port: self.port.clone(),
                source,
            })?;
        Ok(ViewMut {
            port: &self.port,
            element: self.element,
            guard,
        })
    }

    /// Maps the variable for reading.
    pub fn read(&self) -> Result<View<'_>, VariableError> {
        let guard = self
            .allocation()?
            .map_read()
            .map_err(|source| VariableError::FastIo {
                port: self.port.clone(),
                source,
            })?;
        Ok(View {
            port: &self.port,
            element: self.element,
            guard,
        })
    }
}

/// A stream port: a path on disk.
#[derive(Debug, Clone)]
pub(crate) struct StreamPort {
    pub(crate) name: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) dir: PathBuf,
}

impl StreamPort {
    fn matches(&self, key: &str) -> bool {
        self.name.as_deref() == Some(key) || self.path.as_deref() == Some(key)
    }
}

/// What an operator sees in `execute`: its inputs (read-only), outputs (read/write) and
/// stream paths.
#[derive(Debug)]
pub struct ExecuteContext<'a> {
    pub(crate) operator: &'a str,
    pub(crate) host: Option<u32>,
    pub(crate) run: &'a str,
    pub(crate) inputs: Vec<Input>,
    pub(crate) outputs: Vec<Output>,
    pub(crate) stream_inputs: Vec<StreamPort>,
    pub(crate) stream_outputs: Vec<StreamPort>,
}

impl ExecuteContext<'_> {
    /// The operator's name in the pipeline.
    pub fn operator(&self) -> &str {
        self.operator
    }

    /// The run's id.
    pub fn run(&self) -> &str {
        self.run
    }

    /// In cluster mode, the id of the host this operator runs on.
    pub fn host(&self) -> Option<u32> {
        self.host
    }

    /// The array input named `name`.
    pub fn input(&self, name: &str) -> Result<&Input, VariableError> {
        self.inputs
            .iter()
            .find(|i| i.port == name)
            .ok_or_else(|| self.no_port("input", name))
    }

    /// The array output named `name`.
    pub fn output(&self, name: &str) -> Result<&Output, VariableError> {
        self.outputs
            .iter()
            .find(|o| o.port == name)
            .ok_or_else(|| self.no_port("output", name))
    }

    /// The path of the stream input `key` (its path, e.g. `/input`, or its name): the payload
    /// (a file or a folder), or the folder of the producing operator's stream output.
    pub fn input_path(&self, key: &str) -> Result<&Path, VariableError> {
        self.stream_inputs
            .iter()
            .find(|s| s.matches(key))
            .map(|s| s.dir.as_path())
            .ok_or_else(|| self.no_port("input stream", key))
    }

    /// The folder of the stream output `key` (its name or path), created by the driver.
    pub fn output_path(&self, key: &str) -> Result<&Path, VariableError> {
        self.stream_outputs
            .iter()
            .find(|s| s.matches(key))
            .map(|s| s.dir.as_path())
            .ok_or_else(|| self.no_port("output stream", key))
    }

    fn no_port(&self, kind: &'static str, port: &str) -> VariableError {
        VariableError::NoSuchPort {
            operator: self.operator.to_owned(),
            kind,
            port: port.to_owned(),
        }
    }
}
