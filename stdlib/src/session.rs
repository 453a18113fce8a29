//! [`Session`]: a persistent sandboxed Lua state, used directly by a REPL and
//! once per script by [`crate::run`]. Compiles chunks, runs them under the guard
//! and turns the outcome into JSON or an [`Error`].

use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, LuaOptions, StdLib, Value};
use tokio::sync::mpsc::Sender;

use crate::convert::lua_to_json;
use crate::guard::{install_hook, Fatal, Guard};
use crate::{sandbox, Builtin, Error, Host, Limits};

/// Chunk name for REPL input, so errors read `repl:1: ...`.
const REPL_CHUNK_NAME: &str = "repl";

/// How long past the deadline we wait before abandoning a chunk that is stuck
/// somewhere the guard cannot see (normally the guard stops it first).
const BACKSTOP_GRACE: Duration = Duration::from_millis(500);

/// A persistent Lua state for a REPL: globals survive between [`Session::eval`]
/// calls, and each call gets a fresh instruction budget, deadline and output
/// allowance.
pub struct Session {
    lua: Lua,
    guard: Arc<Guard>,
}

/// Stops the chunk running in a [`Session`] at its next check: it ends with
/// [`Error::Interrupted`], which the script cannot catch; the session stays usable.
#[derive(Clone, Debug)]
pub struct Interrupter {
    guard: Arc<Guard>,
}

impl Interrupter {
    /// Interrupts the chunk running now (nothing when none runs).
    pub fn interrupt(&self) {
        self.guard.interrupt();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("limits", &self.guard.limits())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Creates the sandbox with `builtins` forwarding to `host`; printed lines go to `print`.
    ///
    /// When `print` is full, a printing script waits (within its deadline) for
    /// the receiver to take lines, so the receiver must be drained while a
    /// chunk runs, not only after it. Dropping the receiver cancels the running
    /// chunk and every later one with [`Error::Disconnected`].
    pub fn new(
        host: Arc<dyn Host>,
        builtins: &[Builtin],
        limits: Limits,
        print: Sender<String>,
    ) -> Result<Session, Error> {
        let guard = Arc::new(Guard::new(limits, print));
        let lua = sandbox::new_lua(&host, builtins, &guard)?;
        Ok(Session { lua, guard })
    }

    /// A handle that stops the chunk running in this session (from another task or thread).
    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            guard: Arc::clone(&self.guard),
        }
    }

    /// Evaluates one REPL input. An expression such as `1+1` or
    /// `cluster.members()` returns its value; otherwise the input runs as a
    /// statement block and returns what it returns (usually `null`).
    pub async fn eval(&mut self, source: &str) -> Result<serde_json::Value, Error> {
        let function = match compile(&self.lua, &format!("return {source}"), REPL_CHUNK_NAME) {
            Ok(function) => function,
            Err(_) => {
                compile(&self.lua, source, REPL_CHUNK_NAME).map_err(|err| self.classify(&err))?
            }
        };
        self.execute(function).await
    }

    /// Compiles and runs a whole script named `chunk_name`.
    /// Sets the global `arg`: `arg[0] = chunk_name`, then `args` from 1.
    pub(crate) fn set_args(&self, chunk_name: &str, args: &[String]) -> Result<(), Error> {
        let setup = |error: mlua::Error| Error::Setup(error.to_string());
        let table = self.lua.create_table().map_err(setup)?;
        table.raw_set(0, chunk_name).map_err(setup)?;
        for (index, arg) in args.iter().enumerate() {
            table.raw_set(index + 1, arg.as_str()).map_err(setup)?;
        }
        self.lua.globals().raw_set("arg", table).map_err(setup)
    }

    pub(crate) async fn run_chunk(
        &mut self,
        source: &str,
        chunk_name: &str,
    ) -> Result<serde_json::Value, Error> {
        let function = compile(&self.lua, source, chunk_name).map_err(|err| self.classify(&err))?;
        self.execute(function).await
    }

    async fn execute(&mut self, function: Function) -> Result<serde_json::Value, Error> {
        self.guard.begin();
        if self.guard.is_cancelled() {
            return Err(self.guard.error(self.guard.trip(Fatal::Disconnected)));
        }
        install_hook(&self.lua, &self.guard, self.guard.hook_step())
            .map_err(|err| Error::Setup(err.to_string()))?;
        let deadline = self.guard.deadline();
        let backstop = deadline.checked_add(BACKSTOP_GRACE).unwrap_or(deadline);
        let result =
            tokio::time::timeout_at(backstop.into(), function.call_async::<Value>(())).await;
        if let Some(fatal) = self.guard.fatal() {
            return Err(self.guard.error(fatal));
        }
        match result {
            Err(_elapsed) => Err(self.guard.error(self.guard.trip(Fatal::Timeout))),
            Ok(Err(err)) => Err(self.classify(&err)),
            Ok(Ok(value)) => {
                lua_to_json(&value, self.guard.result_budget_bytes()).map_err(Error::Conversion)
            }
        }
    }

    /// Maps an error that reached the top of the script to an [`Error`].
    fn classify(&self, err: &mlua::Error) -> Error {
        match err {
            mlua::Error::SyntaxError { message, .. } => Error::Syntax {
                message: message.clone(),
            },
            mlua::Error::MemoryError(_) => self.guard.error(self.guard.trip(Fatal::Memory)),
            mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
                self.classify(cause)
            }
            mlua::Error::RuntimeError(message) => Error::Runtime {
                message: strip_traceback(message),
            },
            other => Error::Runtime {
                message: strip_traceback(&other.to_string()),
            },
        }
    }
}

fn compile(lua: &Lua, source: &str, chunk_name: &str) -> mlua::Result<Function> {
    lua.load(source)
        .set_name(format!("={chunk_name}"))
        .into_function()
}

/// Keeps the message, drops the `stack traceback:` mlua appends.
fn strip_traceback(message: &str) -> String {
    let end = message.find("\nstack traceback:").unwrap_or(message.len());
    message[..end].trim_end().to_string()
}

/// See [`crate::is_incomplete`].
/// Whether `source` compiles as a chunk named `chunk_name`; the error is Lua's message.
pub(crate) fn check_syntax(source: &str, chunk_name: &str) -> Result<(), String> {
    let lua =
        Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|error| error.to_string())?;
    compile(&lua, source, chunk_name)
        .map(|_| ())
        .map_err(|error| match error {
            mlua::Error::SyntaxError { message, .. } => message,
            other => other.to_string(),
        })
}

pub(crate) fn is_incomplete(source: &str) -> bool {
    let Ok(lua) = Lua::new_with(StdLib::NONE, LuaOptions::default()) else {
        return false;
    };
    let as_statement = compile(&lua, source, REPL_CHUNK_NAME);
    if as_statement.is_ok() {
        return false;
    }
    // `x` is an incomplete statement but a complete expression; `1 +` is an
    // invalid statement but the start of an expression.
    let as_expression = compile(&lua, &format!("return {source}"), REPL_CHUNK_NAME);
    if as_expression.is_ok() {
        return false;
    }
    let unfinished = |result: &mlua::Result<Function>| {
        matches!(
            result,
            Err(mlua::Error::SyntaxError {
                incomplete_input: true,
                ..
            })
        )
    };
    unfinished(&as_statement) || unfinished(&as_expression)
}
