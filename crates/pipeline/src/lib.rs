//! # fragmenta-pipeline: typed operator pipelines over Fast I/O Variables
//!
//! (crate docs are completed below)

pub mod cluster;
mod driver;
mod error;
mod exec;
mod locate;
mod model;
mod operator;
pub mod passthrough;
pub mod process;
mod thread;

pub use crate::driver::{
    OperatorReport, OperatorState, Pipeline, PipelineBuilder, RunOptions, RunReport,
    DEFAULT_OPERATOR_TIMEOUT, DEFAULT_RUN_TIMEOUT,
};
pub use crate::error::{DefinitionError, InvalidPipeline, Mismatch, RunError, Site, VariableError};
pub use crate::exec::{stream_dir, variable_name};
pub use crate::model::{
    element_type_name, parse_element_type, ApiVersion, Container, Dim, InputDef, OperatorDef,
    OutputDef, PipelineDef, PortType, Shape, MAX_NAME_LEN, MAX_OPERATORS, MAX_PORTS,
};
pub use crate::operator::{
    ExecuteContext, Input, Operator, OperatorRegistry, OperatorResult, Output, PortSpec, Ports,
    PrepareContext, View, ViewMut,
};
