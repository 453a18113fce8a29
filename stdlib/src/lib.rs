//! Starling's Lua standard library: runs operator scripts in a sandboxed Lua 5.4
//! state whose only window onto the cluster is a set of named operations.
//!
//! The crate knows nothing about the cluster itself. The caller passes a [`Host`]
//! (which executes operations such as `"cluster.members"` with JSON arguments) and
//! the list of [`Builtin`]s to expose; each builtin becomes a nested Lua global
//! (`cluster.members(...)`) that forwards to the host. A failed operation raises
//! a Lua error carrying the host's message and the caller's line, which `pcall`
//! can catch. Host calls may be made from script coroutines too.
//!
//! Every script runs under [`Limits`]: a memory ceiling, an instruction budget, a
//! wall-clock deadline (which also bounds `sleep`, host calls and waiting to
//! print) and a cap on the bytes it prints. Exceeding any of them ends the
//! script with the matching [`Error`] variant, even if the script tries to catch
//! the failure with `pcall`, `xpcall` or a coroutine.
//!
//! Printed lines go to a bounded channel (a `tokio::sync::mpsc::Sender` whose
//! capacity the caller picks): when it is full, `print` waits for the caller to
//! take lines out, which is the backpressure that keeps a fast script from
//! queueing output without bound. Dropping the receiver cancels the script: it
//! ends with [`Error::Disconnected`] at its next check, whether it is running
//! Lua code (the instruction hook checks every step), matching a pattern,
//! sleeping, waiting on the host or printing.
//!
//! Globals available to scripts: the Lua `table`, `string` (without `dump`),
//! `math`, `utf8` and `coroutine` libraries; the base library without `load`,
//! `loadfile`, `dofile`, `require`, `collectgarbage` and `warn`, and with a
//! `setmetatable` that refuses `__gc` (Lua runs finalizers with hooks off, where
//! no limit applies); `print(...)` (streamed to the caller; it can wait only
//! where the script could yield, so inside a metamethod, a `table.sort`
//! comparator or a `gsub` replacement function a full channel is an error),
//! `sleep(seconds)`,
//! `json.encode(value)`, `json.decode(text)`, `help([name])`, `time.now()`, `log.info/warn/error(...)`
//! (to the member's log, target `script`, each line cut at 4 KiB), and the builtins.
//! `io`, `os`, `debug` and `package` do not exist.
//!
//! The string library's pattern functions (`string.find`, `string.match`,
//! `string.gmatch`, `string.gsub`) are Rust implementations of Lua 5.4's
//! patterns rather than Lua's C code, so the instruction budget and the
//! deadline also stop a pathological pattern on a long subject, and `gsub`
//! cannot build a result larger than the memory limit.
//!
//! # Layout
//! - this file: the public types ([`Host`], [`Builtin`], [`Limits`], [`Script`],
//!   [`Error`]), [`run`] and [`is_incomplete`].
//! - `session`: [`Session`], the persistent state behind a REPL and behind [`run`];
//!   compiles and executes chunks and turns their outcome into JSON or an [`Error`].
//! - `sandbox`: builds the restricted Lua state and installs the globals.
//! - `shim`: the C shim that lets Rust functions raise errors as Lua's own do.
//! - `strings`: the Lua bindings of `string.find`, `match`, `gmatch` and `gsub`.
//! - `pattern`: Lua 5.4 pattern matching in Rust, metered by the guard.
//! - `guard`: the instruction budget, the wall-clock deadline, the output cap,
//!   cancellation and the latch that keeps a tripped limit fatal.
//! - `convert`: Lua ⇄ JSON conversion.
//! - `tests`: the crate's tests, against the real Lua engine.

#![warn(missing_docs)]

mod convert;
mod guard;
mod pattern;
mod sandbox;
mod session;
mod shim;
mod strings;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use session::{Interrupter, Session};

/// Everything a script can ask of the cluster: one named operation with JSON arguments.
pub trait Host: Send + Sync + 'static {
    /// Runs operation `name` (e.g. "cluster.members") with `args` (a JSON array of the
    /// Lua arguments, converted), returning its JSON result or an error message.
    fn call(
        &self,
        name: &str,
        args: Vec<serde_json::Value>,
    ) -> BoxFuture<'static, Result<serde_json::Value, String>>;

    /// A `log.info/warn/error` line (`level`: `info`, `warn`, `error`), after it went to the
    /// member's log: a host may show it elsewhere too (the cluster's `logging` events).
    fn log(&self, level: &str, line: &str) {
        let _ = (level, line);
    }
}

/// One operation exposed to scripts, e.g. `("cluster.members", "cluster.members() -> list of members")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    /// Dotted Lua name; also the operation name passed to [`Host::call`].
    pub name: &'static str,
    /// One-line usage shown by the script-side `help()`.
    pub help: &'static str,
}

/// Resource limits for one script run (or for each [`Session::eval`]). Each
/// tripped limit ends the script with its own [`Error`] variant, which `pcall`
/// cannot catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ceiling on the memory held by the Lua state, in bytes (0 disables it).
    /// Results built in Rust (JSON text, `string.gsub`'s output) are refused
    /// past it too. Exceeding it gives [`Error::MemoryLimit`].
    pub memory_bytes: usize,
    /// Lua VM instructions the script may execute (enforced in steps of at most
    /// 10 000 instructions). Work done in Rust on the script's behalf counts
    /// too: each step of the pattern matcher (one pattern item tried at one
    /// position, or 16 bytes compared or copied) is one instruction. Exceeding
    /// it gives [`Error::InstructionLimit`].
    pub instructions: u64,
    /// Wall-clock time the script may take, including time spent sleeping,
    /// awaiting the host and waiting for room to print. Exceeding it gives
    /// [`Error::Timeout`].
    pub wall_clock: Duration,
    /// Bytes the script may print, each line counted with its line break. A
    /// `print` that would go past it is not sent and gives
    /// [`Error::OutputLimit`].
    pub print_bytes: usize,
}

impl Default for Limits {
    /// 64 MiB of memory, 200 million instructions, 60 s and 1 MiB of output.
    fn default() -> Self {
        Limits {
            memory_bytes: 64 * 1024 * 1024,
            instructions: 200_000_000,
            wall_clock: Duration::from_secs(60),
            print_bytes: 1024 * 1024,
        }
    }
}

/// A script to run with [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Lua source text.
    pub source: String,
    /// Name used in error messages, e.g. `script.lua` gives `script.lua:3: ...`.
    pub chunk_name: String,
    /// What the script finds in the global `arg`: `arg[0]` is `chunk_name`, `arg[1]`... these
    /// (`starling run FILE -- a b`), as the `lua` command does.
    pub args: Vec<String>,
}

/// Why a script did not produce a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The source does not compile; `message` names the chunk and line.
    #[error("syntax error: {message}")]
    Syntax {
        /// Lua's message, e.g. `script.lua:3: unexpected symbol near 'x'`.
        message: String,
    },
    /// The script raised an error (its own, or a failed host operation).
    #[error("{message}")]
    Runtime {
        /// The error with its position, e.g. `script.lua:3: member "x" not found`.
        message: String,
    },
    /// The script executed more Lua instructions than its budget allows.
    #[error("script exceeded its instruction budget of {instructions}")]
    InstructionLimit {
        /// The budget that was exceeded.
        instructions: u64,
    },
    /// The script tried to hold more memory than its limit allows.
    #[error("script exceeded its memory limit of {bytes} bytes")]
    MemoryLimit {
        /// The limit that was exceeded, in bytes.
        bytes: usize,
    },
    /// The script ran past its wall-clock deadline.
    #[error("script exceeded its wall-clock limit of {seconds} s")]
    Timeout {
        /// The wall-clock limit, in seconds.
        seconds: f64,
    },
    /// The script printed more than [`Limits::print_bytes`] allows.
    #[error("script exceeded its output limit of {bytes} bytes")]
    OutputLimit {
        /// The cap that was exceeded, in bytes.
        bytes: usize,
    },
    /// The receiver of printed lines was dropped (the client went away), so
    /// the script was stopped.
    #[error("script stopped because its client disconnected")]
    Disconnected,
    /// The session was interrupted ([`Interrupter::interrupt`], Ctrl-C in the REPL).
    #[error("interrupted")]
    Interrupted,
    /// The script's result cannot be represented as JSON.
    #[error("cannot convert the script's result to JSON: {0}")]
    Conversion(String),
    /// The Lua state could not be set up (e.g. an invalid builtin name).
    #[error("cannot set up the Lua sandbox: {0}")]
    Setup(String),
}

/// Runs `script` once in a fresh sandbox and returns its first return value as
/// JSON (`null` when it returns nothing).
///
/// `print` receives each printed line as it happens; when the channel is full
/// the script waits (within its deadline) until the receiver takes a line.
/// Dropping the receiver cancels the run, which then ends with
/// [`Error::Disconnected`]; a run whose receiver is already gone does not start.
pub async fn run(
    host: Arc<dyn Host>,
    builtins: &[Builtin],
    script: Script,
    limits: Limits,
    print: tokio::sync::mpsc::Sender<String>,
) -> Result<serde_json::Value, Error> {
    let mut session = Session::new(host, builtins, limits, print)?;
    session.set_args(&script.chunk_name, &script.args)?;
    session.run_chunk(&script.source, &script.chunk_name).await
}

/// Checks that `source` compiles (a stored script is checked when stored); the error is
/// Lua's message, with `chunk_name` and the line.
pub fn check_syntax(source: &str, chunk_name: &str) -> Result<(), String> {
    session::check_syntax(source, chunk_name)
}

/// True when `source` is an unfinished Lua statement or expression (an open
/// `function`, `{`, long string, trailing operator, ...) so a REPL should read
/// more lines. Input that compiles either as a chunk or as `return <input>` (such
/// as `x` or `1 + 1`) is complete, so callers need not test `"return " + input`
/// themselves.
pub fn is_incomplete(source: &str) -> bool {
    session::is_incomplete(source)
}

#[cfg(test)]
mod tests;
