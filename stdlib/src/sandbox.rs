//! Builds the restricted Lua state and installs the script-visible globals.
//!
//! Every function we expose is a Rust "raw" function wrapped by the shim (see
//! `shim`), so a failure becomes a Lua string error prefixed with the caller's
//! position (`script.lua:3: member "x" not found`), which `pcall` can catch and
//! which reads well when uncaught. `string.find`, `string.match`,
//! `string.gmatch` and `string.gsub` are replaced by the Rust versions in
//! `strings`, which the guard can stop.

use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, LuaOptions, LuaString, MultiValue, StdLib, Table, Value};

use crate::convert::{json_to_lua, lua_to_json};
use crate::guard::{self, Fatal, Guard};
use crate::shim::{self, reply, Outcome};
use crate::strings;
use crate::{Builtin, Error, Host};

/// Libraries loaded besides the base library.
fn libs() -> StdLib {
    StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE
}

/// Globals removed after loading: code loading, the host's stdout/stderr, the
/// garbage collector's controls, and anything that reaches the file system.
const REMOVED_GLOBALS: &[&str] = &[
    "dofile",
    "loadfile",
    "load",
    "loadstring",
    "require",
    "collectgarbage",
    "module",
    "setfenv",
    "getfenv",
    "warn",
    "print",
    "io",
    "os",
    "debug",
    "package",
];

/// Help for the functions this crate provides itself.
const STANDARD_HELP: &[Builtin] = &[
    Builtin {
        name: "print",
        help: "print(...) -> sends its arguments, tab-separated, to your terminal (waits while output is backed up)",
    },
    Builtin {
        name: "sleep",
        help: "sleep(seconds) -> pauses the script (counts against its time limit)",
    },
    Builtin {
        name: "json.encode",
        help: "json.encode(value) -> JSON text (an empty table is [])",
    },
    Builtin {
        name: "json.decode",
        help: "json.decode(text) -> value (JSON null becomes nil)",
    },
    Builtin {
        name: "help",
        help: "help([name]) -> prints the description of every function, or of `name`",
    },
    Builtin {
        name: "time.now",
        help: "time.now() -> seconds since 1970-01-01 UTC, with a fraction (milliseconds and finer)",
    },
    Builtin {
        name: "log.info",
        help: "log.info(...) -> writes its arguments, tab-separated, to the member's log (first 4 KiB)",
    },
    Builtin {
        name: "log.warn",
        help: "log.warn(...) -> a warning in the member's log",
    },
    Builtin {
        name: "log.error",
        help: "log.error(...) -> an error in the member's log",
    },
];

/// The longest line `log.*` writes to the member's log; the rest is cut.
pub(crate) const LOG_LINE_BYTES_MAX: usize = 4 * 1024;

/// Replaces the base functions a script could use to escape the guard:
/// - `pcall`, `xpcall`, `coroutine.resume`/`close`/`wrap` re-raise a latched limit
///   (and latch the memory limit when they catch "not enough memory");
/// - `coroutine.resume`/`wrap` relay the "pending" yield of a host call made
///   inside a script coroutine up to the task driving the script, so awaiting
///   works at any coroutine depth;
/// - `setmetatable` refuses `__gc`, because Lua runs finalizers with hooks
///   disabled, where no budget or deadline could stop them.
const PRELUDE: &str = r##"
local check, pending = ...
local raw_pcall, raw_xpcall, raw_error, raw_type, raw_select = pcall, xpcall, error, type, select
local raw_setmetatable, raw_rawget = setmetatable, rawget
local raw_create, raw_resume, raw_yield, raw_close =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.close

local function pass(ok, ...)
    if not ok then check((...)) end
    return ok, ...
end

local function relay(co, ok, ...)
    if ok and raw_select("#", ...) == 1 and (...) == pending then
        return relay(co, raw_resume(co, raw_yield(pending)))
    end
    return pass(ok, ...)
end

local function unwrap(co, ok, ...)
    if ok then return ... end
    raw_close(co)
    raw_error((...), 0)
end

pcall = function(f, ...) return pass(raw_pcall(f, ...)) end
xpcall = function(f, handler, ...)
    if raw_type(handler) ~= "function" then
        raw_error("bad argument #2 to 'xpcall' (function expected)", 2)
    end
    return pass(raw_xpcall(f, function(e) check(e) return handler(e) end, ...))
end
setmetatable = function(t, mt)
    if raw_type(mt) == "table" and raw_rawget(mt, "__gc") ~= nil then
        raw_error("__gc metamethods are not available to scripts", 2)
    end
    return raw_setmetatable(t, mt)
end
coroutine.resume = function(co, ...) return relay(co, raw_resume(co, ...)) end
coroutine.close = function(co) return pass(raw_close(co)) end
coroutine.wrap = function(f)
    local co = raw_create(f)
    return function(...) return unwrap(co, relay(co, raw_resume(co, ...))) end
end
"##;

fn setup(err: mlua::Error) -> Error {
    Error::Setup(err.to_string())
}

/// Creates the sandboxed state with all globals installed and the memory limit set.
pub(crate) fn new_lua(
    host: &Arc<dyn Host>,
    builtins: &[Builtin],
    guard: &Arc<Guard>,
) -> Result<Lua, Error> {
    let lua = Lua::new_with(libs(), LuaOptions::default()).map_err(setup)?;
    let tostring: Function = lua.globals().get("tostring").map_err(setup)?;
    strip_globals(&lua).map_err(setup)?;
    let installer = Installer::new(&lua);
    let mut help: Vec<Builtin> = STANDARD_HELP.to_vec();
    help.extend_from_slice(builtins);
    installer.install("print", print_fn(&lua, tostring.clone(), guard))?;
    installer.install("sleep", sleep_fn(&lua, guard))?;
    installer.install("json.encode", json_encode_fn(&lua, guard))?;
    installer.install("json.decode", json_decode_fn(&lua))?;
    installer.install("help", help_fn(&lua, help, guard))?;
    installer.install("time.now", time_now_fn(&lua))?;
    for level in [LogLevel::Info, LogLevel::Warn, LogLevel::Error] {
        installer.install(level.name(), log_fn(&lua, host, tostring.clone(), level))?;
    }
    for builtin in builtins {
        installer.install(builtin.name, builtin_fn(&lua, host, guard, builtin.name))?;
    }
    strings::install(&lua, guard).map_err(setup)?;
    install_prelude(&lua, guard).map_err(setup)?;
    lua.set_memory_limit(guard.limits().memory_bytes)
        .map_err(setup)?;
    Ok(lua)
}

fn strip_globals(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    for name in REMOVED_GLOBALS {
        globals.raw_set(*name, Value::Nil)?;
    }
    let string: Table = globals.raw_get("string")?;
    string.raw_set("dump", Value::Nil)
}

/// Places raw functions, wrapped by the shim, at dotted global paths.
struct Installer {
    lua: Lua,
    globals: Table,
}

impl Installer {
    fn new(lua: &Lua) -> Self {
        Installer {
            lua: lua.clone(),
            globals: lua.globals(),
        }
    }

    fn install(&self, path: &str, raw: mlua::Result<Function>) -> Result<(), Error> {
        let segments: Vec<&str> = path.split('.').collect();
        let Some((last, parents)) = segments.split_last() else {
            return Err(Error::Setup(format!("invalid builtin name `{path}`")));
        };
        if !segments.iter().all(|segment| is_identifier(segment)) {
            return Err(Error::Setup(format!(
                "invalid builtin name `{path}`: expected dotted Lua identifiers such as `cluster.members`"
            )));
        }
        let taken = || Error::Setup(format!("builtin `{path}` collides with an existing global"));
        let mut table = self.globals.clone();
        for segment in parents {
            table = match table.raw_get::<Value>(*segment).map_err(setup)? {
                Value::Table(inner) => inner,
                Value::Nil => {
                    let inner = self.lua.create_table().map_err(setup)?;
                    table.raw_set(*segment, &inner).map_err(setup)?;
                    inner
                }
                _ => return Err(taken()),
            };
        }
        if !table.raw_get::<Value>(*last).map_err(setup)?.is_nil() {
            return Err(taken());
        }
        let raw = raw.map_err(setup)?;
        let wrapped = shim::wrap(&self.lua, raw).map_err(setup)?;
        table.raw_set(*last, wrapped).map_err(setup)
    }
}

fn is_identifier(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn print_fn(lua: &Lua, tostring: Function, guard: &Arc<Guard>) -> mlua::Result<Function> {
    let guard = Arc::clone(guard);
    lua.create_async_function(move |lua, args: MultiValue| {
        let guard = Arc::clone(&guard);
        // `tostring` may run Lua code (`__tostring`), so it runs before we wait.
        let line = printed_line(&tostring, args);
        async move {
            let line = line?;
            match guard.print(line).await {
                Ok(()) => reply(&lua, Ok(Value::Nil)),
                Err(fatal) => Err(guard::abort(&lua, &guard, fatal)),
            }
        }
    })
}

/// `print`'s arguments converted by `tostring` and separated by tabs.
fn printed_line(tostring: &Function, args: MultiValue) -> mlua::Result<String> {
    let mut parts = Vec::with_capacity(args.len());
    for arg in args {
        let text: LuaString = tostring.call(arg)?;
        parts.push(String::from_utf8_lossy(&text.as_bytes()).into_owned());
    }
    Ok(parts.join("\t"))
}

fn time_now_fn(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, _: MultiValue| {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        reply(lua, Ok(Value::Number(since.as_secs_f64())))
    })
}

/// The level of a `log.*` line.
#[derive(Clone, Copy)]
enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn word(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    fn name(self) -> &'static str {
        match self {
            LogLevel::Info => "log.info",
            LogLevel::Warn => "log.warn",
            LogLevel::Error => "log.error",
        }
    }
}

fn log_fn(
    lua: &Lua,
    host: &Arc<dyn Host>,
    tostring: Function,
    level: LogLevel,
) -> mlua::Result<Function> {
    let host = Arc::clone(host);
    lua.create_function(move |lua, args: MultiValue| {
        let mut line = printed_line(&tostring, args)?;
        if line.len() > LOG_LINE_BYTES_MAX {
            let mut end = LOG_LINE_BYTES_MAX;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" [cut]");
        }
        match level {
            LogLevel::Info => tracing::info!(target: "script", "{line}"),
            LogLevel::Warn => tracing::warn!(target: "script", "{line}"),
            LogLevel::Error => tracing::error!(target: "script", "{line}"),
        }
        host.log(level.word(), &line);
        reply(lua, Ok(Value::Nil))
    })
}

fn sleep_fn(lua: &Lua, guard: &Arc<Guard>) -> mlua::Result<Function> {
    let guard = Arc::clone(guard);
    lua.create_async_function(move |lua, args: MultiValue| {
        let guard = Arc::clone(&guard);
        async move {
            match sleep(&guard, args).await {
                Ok(outcome) => reply(&lua, outcome),
                Err(fatal) => Err(guard::abort(&lua, &guard, fatal)),
            }
        }
    })
}

/// Sleeps as asked, or fails with a message on a bad argument, or with the
/// limit that stopped the wait.
async fn sleep(guard: &Guard, args: MultiValue) -> Result<Outcome, Fatal> {
    let seconds = match args.front() {
        Some(Value::Integer(seconds)) => *seconds as f64,
        Some(Value::Number(seconds)) => *seconds,
        other => {
            let got = other.map_or("no value", Value::type_name);
            return Ok(Err(format!(
                "sleep(seconds) expects a number of seconds, got {got}"
            )));
        }
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Ok(Err(format!(
            "sleep(seconds) expects a non-negative number of seconds, got {seconds}"
        )));
    }
    // Too long to represent is as good as forever: the deadline ends it.
    let pause = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
    guard.wait(tokio::time::sleep(pause)).await?;
    Ok(Ok(Value::Nil))
}

fn json_encode_fn(lua: &Lua, guard: &Arc<Guard>) -> mlua::Result<Function> {
    let budget_bytes = guard.result_budget_bytes();
    lua.create_function(move |lua, args: MultiValue| {
        let value = args.front().unwrap_or(&Value::Nil);
        let outcome = match lua_to_json(value, budget_bytes) {
            Ok(json) => Ok(Value::String(lua.create_string(json.to_string())?)),
            Err(message) => Err(format!("json.encode: cannot convert to JSON: {message}")),
        };
        reply(lua, outcome)
    })
}

fn json_decode_fn(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, args: MultiValue| {
        let outcome = match args.front() {
            Some(Value::String(text)) => {
                match serde_json::from_slice::<serde_json::Value>(&text.as_bytes()) {
                    Ok(json) => Ok(json_to_lua(lua, &json)?),
                    Err(err) => Err(format!("json.decode: invalid JSON: {err}")),
                }
            }
            other => {
                let got = other.map_or("no value", Value::type_name);
                Err(format!("json.decode(text) expects a string, got {got}"))
            }
        };
        reply(lua, outcome)
    })
}

fn help_fn(lua: &Lua, entries: Vec<Builtin>, guard: &Arc<Guard>) -> mlua::Result<Function> {
    let guard = Arc::clone(guard);
    lua.create_async_function(move |lua, args: MultiValue| {
        let guard = Arc::clone(&guard);
        let lines = help_lines(&entries, args);
        async move {
            let lines = match lines {
                Ok(lines) => lines,
                Err(message) => return reply(&lua, Err(message)),
            };
            for line in lines {
                if let Err(fatal) = guard.print(line).await {
                    return Err(guard::abort(&lua, &guard, fatal));
                }
            }
            reply(&lua, Ok(Value::Nil))
        }
    })
}

/// The help lines `help(args...)` prints, or why there are none.
fn help_lines(entries: &[Builtin], args: MultiValue) -> Result<Vec<String>, String> {
    let topic = match args.front() {
        None | Some(Value::Nil) => None,
        Some(Value::String(name)) => Some(name.to_string_lossy()),
        Some(other) => {
            let got = other.type_name();
            return Err(format!("help([name]) expects a string, got {got}"));
        }
    };
    let matches = |entry: &&Builtin| match &topic {
        None => true,
        Some(topic) => {
            entry.name == topic
                || entry
                    .name
                    .strip_prefix(topic.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        }
    };
    let lines: Vec<String> = entries
        .iter()
        .filter(matches)
        .map(|entry| entry.help.to_string())
        .collect();
    if lines.is_empty() {
        let topic = topic.unwrap_or_default();
        return Err(format!("help: no function named `{topic}`"));
    }
    Ok(lines)
}

fn builtin_fn(
    lua: &Lua,
    host: &Arc<dyn Host>,
    guard: &Arc<Guard>,
    name: &'static str,
) -> mlua::Result<Function> {
    let host = Arc::clone(host);
    let guard = Arc::clone(guard);
    lua.create_async_function(move |lua, args: MultiValue| {
        let host = Arc::clone(&host);
        let guard = Arc::clone(&guard);
        async move {
            let outcome = call_host(&lua, host.as_ref(), &guard, name, args).await?;
            reply(&lua, outcome)
        }
    })
}

/// Converts the arguments, calls the host (bounded by the deadline and
/// cancellation) and converts the result back. Internal Lua failures (e.g. out
/// of memory) and tripped limits are `mlua` errors.
async fn call_host(
    lua: &Lua,
    host: &dyn Host,
    guard: &Arc<Guard>,
    name: &str,
    args: MultiValue,
) -> mlua::Result<Outcome> {
    let mut json_args = Vec::with_capacity(args.len());
    for (index, arg) in args.iter().enumerate() {
        match lua_to_json(arg, guard.result_budget_bytes()) {
            Ok(json) => json_args.push(json),
            Err(message) => {
                let position = index + 1;
                return Ok(Err(format!(
                    "{name}: argument #{position} cannot be converted to JSON: {message}"
                )));
            }
        }
    }
    let call = host.call(name, json_args);
    match guard.wait(call).await {
        Err(fatal) => Err(guard::abort(lua, guard, fatal)),
        Ok(Err(message)) => Ok(Err(message)),
        Ok(Ok(json)) => Ok(Ok(json_to_lua(lua, &json)?)),
    }
}

fn install_prelude(lua: &Lua, guard: &Arc<Guard>) -> mlua::Result<()> {
    let guard = Arc::clone(guard);
    let check = lua.create_function(move |_, caught: Value| {
        if let Some(fatal) = guard.fatal() {
            return Err(guard.lua_error(fatal));
        }
        if is_memory_error(&caught) {
            return Err(guard.lua_error(guard.trip(Fatal::Memory)));
        }
        Ok(())
    })?;
    // The value mlua's async functions yield while their future is pending
    // (a hidden but public mlua item; `host_calls_work_inside_coroutines`
    // fails if its meaning changes).
    let pending = Value::LightUserData(Lua::poll_pending());
    lua.load(PRELUDE)
        .set_name("=starling")
        .call((check, pending))
}

/// True for the error value Lua produces when an allocation fails.
fn is_memory_error(caught: &Value) -> bool {
    fn in_chain(err: &mlua::Error) -> bool {
        match err {
            mlua::Error::MemoryError(_) => true,
            mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
                in_chain(cause)
            }
            _ => false,
        }
    }
    match caught {
        Value::String(message) => &*message.as_bytes() == b"not enough memory",
        Value::Error(err) => in_chain(err),
        _ => false,
    }
}
