//! Placement scriptlets: Starlark source in `instances.placement.scriptlet` that chooses the
//! member for an instance, with LXD's and Incus's semantics.
//!
//! A scriptlet defines `instance_placement(request, candidate_members)`. [`Scriptlet::compile`]
//! parses, checks and freezes it once; [`Scriptlet::run`] calls the frozen function on a fresh
//! heap each time, so a call costs no parsing. The function calls `set_target(name)` to choose
//! a candidate, or nothing to leave the choice to the built-in rule, and must return `None`.
//!
//! # Dialect
//! Standard Starlark, as LXD runs it: no `while` (not in the language), no top-level `for` or
//! `if`, no `load`. Recursion of a `def` fails the run (`function f called recursively`);
//! lambdas are bounded by the call depth. `x *= n` is refused at compile time: the memory
//! bound checks `x * n` before building it, and write `x = x * n` for that.
//!
//! # Bounds
//! Every evaluation (the module at compile time, each call) has a time and a memory bound
//! ([`Limits`]); one that exceeds either fails like `fail()`, naming the bound. The `bounds`
//! module says how they are enforced and what they do not cover.
//!
//! # Built-ins
//! `log_info`, `log_warn`, `log_error`, `set_target` (also `set_cluster_member_target`),
//! `get_cluster_member_state`, `get_cluster_member_resources`, `get_instance_resources`,
//! Incus's `get_instances`, `get_instances_count`, `get_cluster_members`, `get_project`, and
//! Starlark's own (`fail`, `len`, `sorted`, ...), all in the `builtins` module.

mod bounds;
mod builtins;
mod rewrite;
mod values;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starlark::environment::{Globals, GlobalsBuilder, Module};
use starlark::eval::Evaluator;
use starlark::syntax::ast::{AssignOp, AstStmt, ParameterP, StmtP};
use starlark::syntax::{AstModule, Dialect};
use starlark::values::OwnedFrozenValue;

use super::{MemberView, PlacementRequest};
use bounds::{Guard, RangeStepsScope};
use builtins::{Call, Context};

/// The function a scriptlet must define.
pub const FUNCTION: &str = "instance_placement";

/// The parameters it must take, in order.
pub const PARAMETERS: [&str; 2] = ["request", "candidate_members"];

/// The name `x * y` is rewritten to, so that repetition is checked against the memory bound.
const MULTIPLY: &str = "_starling_multiply";

/// The name `x + y` is rewritten to, so that joining sequences is checked against the memory
/// bound.
const ADD: &str = "_starling_add";

/// The name `x % y` is rewritten to, so that formatting is checked against the memory bound.
const PERCENT: &str = "_starling_percent";

/// The bounds of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time.
    pub time: Duration,
    /// Bytes allocated on the Starlark heap (nothing is freed during a call, so this bounds
    /// everything the call allocates there).
    pub memory_bytes: usize,
}

impl Default for Limits {
    /// One second and 64 MiB.
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(1),
            memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The level of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `log_info`.
    Info,
    /// `log_warn`.
    Warn,
    /// `log_error`.
    Error,
}

/// A line logged by a scriptlet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// The values, turned into text and joined with spaces.
    pub text: String,
}

/// What a call decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The candidate given to `set_target`, the last one if several; `None` leaves the choice
    /// to the built-in rule.
    pub target: Option<String>,
    /// The lines logged, in order.
    pub log: Vec<LogLine>,
}

/// The read-only questions a scriptlet may ask the cluster. The caller answers them from its
/// snapshot; nothing here is asked more than the scriptlet asks.
pub trait ScriptletHost {
    /// A member's state: `sysinfo{uptime, load_averages, total_ram, free_ram, ...}`,
    /// `storage_pools{...}`. Only asked for candidates.
    fn member_state(&self, name: &str) -> Result<serde_json::Value, String>;
    /// A member's resources: `cpu{architecture, sockets, total}`, `memory{used, total}`,
    /// `storage{disks, total}`, `gpu`, `network`, `system`. Only asked for candidates.
    fn member_resources(&self, name: &str) -> Result<serde_json::Value, String>;
    /// Instances (LXD's instance fields, `location` included), filtered by project and member.
    fn instances(&self, project: Option<&str>, location: Option<&str>) -> Vec<serde_json::Value>;
    /// How many instances, filtered so; `pending` also counts creations in flight.
    fn instances_count(&self, project: Option<&str>, location: Option<&str>, pending: bool) -> u64;
    /// The online members, of a group or all.
    fn cluster_members(&self, group: Option<&str>) -> Vec<MemberView>;
    /// A project (`name`, `description`, `config`), `None` when there is none of that name.
    fn project(&self, name: &str) -> Option<serde_json::Value>;
}

/// Why a scriptlet was refused or failed. Inside a placement, the text goes after
/// `Failed instance placement scriptlet: `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ScriptletError {
    /// The source does not parse.
    #[error("Syntax error on line {line}: {message}")]
    Syntax {
        /// Line, from 1.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// The source parses but does not compile or its top level fails (an unknown name, a
    /// `load`, a failing top-level expression).
    #[error("{message}{}", Line(*.line))]
    Compile {
        /// Line, from 1, when known.
        line: Option<usize>,
        /// Starlark's message.
        message: String,
    },
    /// A construct Starling does not run.
    #[error("Line {line}: {message}")]
    Unsupported {
        /// Line, from 1.
        line: usize,
        /// What and why.
        message: String,
    },
    /// No `def instance_placement(...)` at the top level.
    #[error("The scriptlet does not define instance_placement(request, candidate_members)")]
    MissingFunction,
    /// `instance_placement` takes other parameters.
    #[error(
        "instance_placement must take (request, candidate_members), not ({found}) (line {line})"
    )]
    WrongParameters {
        /// The parameters it has.
        found: String,
        /// Line, from 1.
        line: usize,
    },
    /// `fail(...)` was called.
    #[error("fail: {message}{}", Line(*.line))]
    Fail {
        /// The values given to `fail`, joined.
        message: String,
        /// Line, from 1, when known.
        line: Option<usize>,
    },
    /// Any other error while running (a type error, a missing key or attribute, ...).
    #[error("{message}{}", Line(*.line))]
    Runtime {
        /// Starlark's message.
        message: String,
        /// Line, from 1, when known.
        line: Option<usize>,
    },
    /// `set_target` with a name that is not a candidate.
    #[error("Member {name:?} given to set_target is not a candidate")]
    InvalidTarget {
        /// The name given.
        name: String,
    },
    /// The host could not answer a built-in.
    #[error("{builtin} failed: {message}")]
    Host {
        /// The built-in.
        builtin: &'static str,
        /// The host's message.
        message: String,
    },
    /// `instance_placement` returned something else than `None`.
    #[error("Failed with unexpected return value: {value}")]
    UnexpectedReturn {
        /// The value returned, as Starlark writes it.
        value: String,
    },
    /// A placement built-in was called outside `instance_placement` (at the top level).
    #[error("{builtin} can only be called from instance_placement")]
    OutsideCall {
        /// The built-in.
        builtin: &'static str,
    },
    /// A built-in ran in an evaluation Starling did not set up (a bug).
    #[error("scriptlet built-in called outside a scriptlet evaluation")]
    NotInCall,
    /// The run took longer than its time bound.
    #[error("Time limit of {limit:?} exceeded")]
    TimeLimit {
        /// The bound.
        limit: Duration,
    },
    /// The run allocated more than its memory bound, or was about to.
    #[error("Memory limit of {limit_bytes} bytes exceeded")]
    MemoryLimit {
        /// The bound.
        limit_bytes: usize,
    },
    /// A built-in consumed a long range at once (`list(range(10**9))`).
    #[error(
        "Range limit exceeded: a built-in consumed more than {limit} elements of a range at once"
    )]
    RangeLimit {
        /// The bound.
        limit: u64,
    },
    /// A `def` called itself.
    #[error("function {function} called recursively")]
    Recursion {
        /// The function.
        function: String,
    },
}

/// ` (line N)` when the line is known.
struct Line(Option<usize>);

impl fmt::Display for Line {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(formatter, " (line {line})"),
            None => Ok(()),
        }
    }
}

/// A compiled scriptlet: cheap to run many times, shareable between threads.
#[derive(Clone, Debug)]
pub struct Scriptlet {
    /// The frozen `instance_placement`; its heap holds whatever it uses.
    function: OwnedFrozenValue,
    /// Names of its `def`s, for the recursion check.
    functions: Arc<BTreeSet<String>>,
    /// The candidates' values, kept between calls.
    members: values::FrozenMembers,
}

/// Checks a scriptlet as `config set instances.placement.scriptlet` does: compiles it (with
/// the default bounds on its top level) and keeps nothing.
pub fn validate(source: &str) -> Result<(), ScriptletError> {
    Scriptlet::compile(source).map(|_| ())
}

impl Scriptlet {
    /// Parses, checks and evaluates the scriptlet's top level under [`Limits::default`]:
    /// refuses syntax errors and unknown names (with their line), `x *= n`, and a missing or
    /// wrongly declared `instance_placement`.
    pub fn compile(source: &str) -> Result<Scriptlet, ScriptletError> {
        let dialect = Dialect {
            enable_load: false,
            ..Dialect::Standard
        };
        let parse = |source: String| {
            AstModule::parse("placement.star", source, &dialect).map_err(|error| {
                ScriptletError::Syntax {
                    line: error_line(&error).unwrap_or(1),
                    message: error.without_diagnostic().to_string(),
                }
            })
        };
        let ast = parse(source.to_string())?;
        let functions = check_statements(&ast)?;
        let guarded = rewrite::guard_source(&ast, source)?;
        let mut ast = if guarded == source {
            ast
        } else {
            parse(guarded)?
        };
        ast.replace_binary_operators(&HashMap::from([
            ("+".to_string(), ADD.to_string()),
            ("*".to_string(), MULTIPLY.to_string()),
            ("%".to_string(), PERCENT.to_string()),
        ]));
        let limits = Limits::default();
        let guard = Rc::new(Guard::new(
            limits.time,
            limits.memory_bytes,
            Arc::clone(&functions),
        ));
        let module = Module::with_temp_heap(|module| {
            let _range_steps = RangeStepsScope::enter();
            {
                let context = Context {
                    guard: Rc::clone(&guard),
                    call: None,
                };
                let mut eval = Evaluator::new(&module);
                eval.extra = Some(&context);
                bounds::install(&mut eval, &guard);
                if let Err(error) = eval.eval_module(ast, globals()) {
                    return Err(match guard.exceeded() {
                        Some(exceeded) => exceeded.into_error(),
                        None => compile_error(&error),
                    });
                }
            }
            module.freeze().map_err(|error| ScriptletError::Compile {
                line: None,
                message: format!("{error:?}"),
            })
        })?;
        // `def instance_placement` at the top level was checked; a later assignment could
        // still have replaced it with something that is not a function.
        let function = module
            .get(FUNCTION)
            .map_err(|_| ScriptletError::MissingFunction)?;
        if function.value().get_type() != "function" {
            return Err(ScriptletError::MissingFunction);
        }
        Ok(Scriptlet {
            function,
            functions,
            members: values::FrozenMembers::default(),
        })
    }

    /// Calls `instance_placement(request=..., candidate_members=...)` within `limits`.
    pub fn run(
        &self,
        request: &PlacementRequest,
        candidates: &[impl std::borrow::Borrow<MemberView>],
        host: &dyn ScriptletHost,
        limits: &Limits,
    ) -> Result<Outcome, ScriptletError> {
        let candidates: Vec<&MemberView> =
            candidates.iter().map(|member| member.borrow()).collect();
        let candidates = candidates.as_slice();
        let guard = Rc::new(Guard::new(
            limits.time,
            limits.memory_bytes,
            Arc::clone(&self.functions),
        ));
        let call = Call {
            request,
            candidates,
            host,
            log: RefCell::new(Vec::new()),
            target: RefCell::new(None),
            failure: RefCell::new(None),
        };
        let context = Context {
            guard: Rc::clone(&guard),
            call: Some(&call),
        };
        // Ok(None) when it returned None, Ok(Some(repr)) when it returned something else.
        let result = Module::with_temp_heap(|module| {
            let _range_steps = RangeStepsScope::enter();
            let heap = module.heap();
            let mut eval = Evaluator::new(&module);
            eval.extra = Some(&context);
            bounds::install(&mut eval, &guard);
            // The frozen function, reachable from this heap (which keeps the frozen one alive).
            let function = heap.access_owned_frozen_value(&self.function);
            let arguments = [
                (PARAMETERS[0], values::request_value(heap, request)),
                (PARAMETERS[1], self.members.list(heap, candidates)),
            ];
            eval.eval_function(function, &[], &arguments)
                .map(|value| (!value.is_none()).then(|| value.to_repr()))
        });
        // A bound or a typed failure from a built-in comes first: the Starlark error that
        // carried it out of the evaluation says less.
        if let Some(exceeded) = guard.exceeded() {
            return Err(exceeded.into_error());
        }
        match result {
            Ok(None) => Ok(Outcome {
                target: call.target.into_inner(),
                log: call.log.into_inner(),
            }),
            Ok(Some(value)) => Err(ScriptletError::UnexpectedReturn { value }),
            Err(error) => Err(call
                .failure
                .into_inner()
                .unwrap_or_else(|| runtime_error(&error))),
        }
    }
}

/// The Starlark globals of every scriptlet: the standard library and the placement built-ins.
fn globals() -> &'static Globals {
    static GLOBALS: OnceLock<Globals> = OnceLock::new();
    GLOBALS.get_or_init(|| GlobalsBuilder::standard().with(builtins::register).build())
}

/// Line (from 1) of a Starlark error, when it has one.
fn error_line(error: &starlark::Error) -> Option<usize> {
    error.span().map(|span| span.resolve_span().begin.line + 1)
}

fn compile_error(error: &starlark::Error) -> ScriptletError {
    ScriptletError::Compile {
        line: error_line(error),
        message: error.without_diagnostic().to_string(),
    }
}

fn runtime_error(error: &starlark::Error) -> ScriptletError {
    let line = error_line(error);
    match error.kind() {
        starlark::ErrorKind::Fail(message) => ScriptletError::Fail {
            message: message.to_string().trim().to_string(),
            line,
        },
        _ => ScriptletError::Runtime {
            message: error.without_diagnostic().to_string(),
            line,
        },
    }
}

/// Checks the statements: `instance_placement` declared right, no `*=`. Returns the names of
/// every `def`, for the recursion check.
fn check_statements(ast: &AstModule) -> Result<Arc<BTreeSet<String>>, ScriptletError> {
    let line = |statement: &AstStmt| ast.file_span(statement.span).resolve_span().begin.line + 1;
    let mut functions = BTreeSet::new();
    let mut problem = None;
    visit_statements(ast.statement(), &mut |statement| match &statement.node {
        StmtP::Def(def) => {
            functions.insert(def.name.ident.clone());
        }
        StmtP::AssignModify(_, AssignOp::Multiply, _) if problem.is_none() => {
            problem = Some(ScriptletError::Unsupported {
                line: line(statement),
                message: "`x *= y` is not supported in scriptlets; write `x = x * y`".to_string(),
            });
        }
        _ => {}
    });
    if let Some(problem) = problem {
        return Err(problem);
    }
    let top_level: Vec<&AstStmt> = match &ast.statement().node {
        StmtP::Statements(statements) => statements.iter().collect(),
        _ => vec![ast.statement()],
    };
    let definition = top_level
        .iter()
        .find_map(|statement| match &statement.node {
            StmtP::Def(def) if def.name.ident == FUNCTION => Some((def, line(statement))),
            _ => None,
        });
    let Some((definition, def_line)) = definition else {
        return Err(ScriptletError::MissingFunction);
    };
    let parameters: Vec<String> = definition
        .params
        .iter()
        .map(|parameter| match &parameter.node {
            ParameterP::Normal(name, _, _) => name.ident.clone(),
            ParameterP::Args(name, _) => format!("*{}", name.ident),
            ParameterP::KwArgs(name, _) => format!("**{}", name.ident),
            ParameterP::NoArgs => "*".to_string(),
            ParameterP::Slash => "/".to_string(),
        })
        .collect();
    if parameters != PARAMETERS {
        return Err(ScriptletError::WrongParameters {
            found: parameters.join(", "),
            line: def_line,
        });
    }
    Ok(Arc::new(functions))
}

fn visit_statements<'a>(statement: &'a AstStmt, visit: &mut impl FnMut(&'a AstStmt)) {
    visit(statement);
    statement.visit_stmt(|child| visit_statements(child, visit));
}

/// What an instance asks for, from its expanded config and devices (`get_instance_resources`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceResources {
    /// CPUs from `limits.cpu`: a count (`2`), or the CPUs of a set (`0-3`, `0,2,4-5`); 0 when
    /// unset or not understood.
    pub cpu_cores: u64,
    /// Bytes from `limits.memory` (`512MiB`, `1GB`, `2GiB`, `1048576`); 0 when unset, given
    /// as a percentage of the host's memory (which depends on the member), or not understood.
    pub memory_size: u64,
    /// Bytes from the `size` of the root disk (the disk device with `path=/`); 0 when unset.
    pub root_disk_size: u64,
}

/// Reads [`InstanceResources`] from a request.
pub fn instance_resources(request: &PlacementRequest) -> InstanceResources {
    let root_size = request
        .devices
        .values()
        .find(|device| {
            device.get("type").map(String::as_str) == Some("disk")
                && device.get("path").map(String::as_str) == Some("/")
        })
        .and_then(|device| device.get("size"));
    InstanceResources {
        cpu_cores: request
            .config
            .get("limits.cpu")
            .and_then(|value| cpu_count(value))
            .unwrap_or(0),
        memory_size: request
            .config
            .get("limits.memory")
            .and_then(|value| byte_size(value))
            .unwrap_or(0),
        root_disk_size: root_size.and_then(|value| byte_size(value)).unwrap_or(0),
    }
}

/// `limits.cpu`: a count, or a CPU set (`0-3`, `0,2,4-5`) whose CPUs are counted.
fn cpu_count(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if !value.contains(['-', ',']) {
        return value.parse().ok();
    }
    let mut cpus = BTreeSet::new();
    for part in value.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u64, u64) =
                    (first.trim().parse().ok()?, last.trim().parse().ok()?);
                if last < first || last - first > 65_536 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => {
                cpus.insert(part.parse::<u64>().ok()?);
            }
        }
    }
    Some(cpus.len() as u64)
}

/// LXD's byte sizes: a number with an optional unit, decimal (`kB`, `MB`, ... `EB`) or binary
/// (`KiB`, `MiB`, ... `EiB`), `B` or none for bytes. Percentages and anything else: `None`.
fn byte_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|character: char| !(character.is_ascii_digit() || character == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        "EB" => 1_000_000_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "EiB" => 1 << 60,
        _ => return None,
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier);
    }
    let fraction: f64 = number.parse().ok()?;
    let bytes = fraction * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
