//! The script-visible `string.find`, `string.match`, `string.gmatch` and
//! `string.gsub`: thin Lua bindings over [`crate::pattern`] with Lua 5.4's
//! argument handling (numbers as strings, negative and out-of-range `init`,
//! `plain` find, replacement strings, tables and functions), so the guard's
//! limits apply while they match. They replace the C functions in the
//! `string` table, which is also the string metatable's `__index`, so method
//! calls such as `("abc"):find("b")` use them too.
//!
//! Each is a raw function for the shim (see `shim`). Lua-style errors
//! (`malformed pattern ...`, `bad argument ...`) are raised at the caller's
//! position; an error raised by a replacement function passes through
//! unchanged; a tripped limit ends the script through [`guard::abort`].

use std::sync::{Arc, Mutex, PoisonError};

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use crate::guard::{self, Fatal, Guard};
use crate::pattern::{self, Budget, Capture, Iteration, Match, Replace, Stop, Template};
use crate::shim;

/// Why a string function did not return normally.
enum Failure {
    /// A Lua-style error message, raised at the caller's position.
    Message(String),
    /// An error value raised by script code we called, raised again unchanged.
    Rethrow(Value),
    /// A limit tripped.
    Limit(Fatal),
    /// Lua itself failed (e.g. no memory for the result).
    Lua(mlua::Error),
}

impl From<Stop> for Failure {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Invalid(message) => Failure::Message(message),
            Stop::Limit(fatal) => Failure::Limit(fatal),
        }
    }
}

impl From<mlua::Error> for Failure {
    fn from(err: mlua::Error) -> Self {
        Failure::Lua(err)
    }
}

/// The body of one string function.
type Body = fn(&Lua, &Context, Args) -> Result<Vec<Value>, Failure>;

/// What every string function needs besides its arguments.
#[derive(Clone)]
struct Context {
    guard: Arc<Guard>,
    /// Lua's own `pcall`, saved before the sandbox replaces it, to call
    /// replacement functions without losing the value of their errors.
    raw_pcall: Function,
}

/// Replaces `string.find`, `string.match`, `string.gmatch` and `string.gsub`.
/// Call it before the prelude replaces `pcall`.
pub(crate) fn install(lua: &Lua, guard: &Arc<Guard>) -> mlua::Result<()> {
    let context = Context {
        guard: Arc::clone(guard),
        raw_pcall: lua.globals().raw_get("pcall")?,
    };
    let string: Table = lua.globals().raw_get("string")?;
    let functions: [(&str, Body); 4] = [
        ("find", |lua, context, args| find(lua, context, args, true)),
        ("match", |lua, context, args| {
            find(lua, context, args, false)
        }),
        ("gmatch", gmatch),
        ("gsub", gsub),
    ];
    for (name, body) in functions {
        let context = context.clone();
        let raw = lua.create_function(move |lua, values: MultiValue| {
            let args = Args {
                function: name,
                values: values.into_vec(),
            };
            finish(lua, &context.guard, body(lua, &context, args))
        })?;
        string.raw_set(name, shim::wrap(lua, raw)?)?;
    }
    Ok(())
}

/// Turns a string function's result into the shim's `status, values...`.
fn finish(
    lua: &Lua,
    guard: &Arc<Guard>,
    result: Result<Vec<Value>, Failure>,
) -> mlua::Result<MultiValue> {
    let (status, rest) = match result {
        Ok(values) => (Value::Boolean(true), values),
        Err(Failure::Message(message)) => {
            let message = Value::String(lua.create_string(message)?);
            (Value::Boolean(false), vec![message])
        }
        Err(Failure::Rethrow(value)) => (Value::Nil, vec![value]),
        Err(Failure::Limit(fatal)) => return Err(guard::abort(lua, guard, fatal)),
        Err(Failure::Lua(err)) => return Err(err),
    };
    let mut values = Vec::with_capacity(rest.len() + 1);
    values.push(status);
    values.extend(rest);
    Ok(MultiValue::from_vec(values))
}

/// Runs `work` with a step budget charged to `guard`, reporting the last
/// partial batch when it ends.
fn metered<T>(
    guard: &Guard,
    work: impl FnOnce(&mut Budget<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let report = |steps: u64| guard.charge(steps);
    let mut budget = Budget::new(u64::from(guard.hook_step()), &report);
    let result = work(&mut budget);
    let flushed = budget.flush();
    let value = result?;
    flushed?;
    Ok(value)
}

/// `string.find(s, pattern [, init [, plain]])` and `string.match(s, pattern [, init])`.
fn find(lua: &Lua, context: &Context, args: Args, is_find: bool) -> Result<Vec<Value>, Failure> {
    let subject = args.string(lua, 1)?;
    let pattern = args.string(lua, 2)?;
    let init = args.optional_integer(lua, 3)?.unwrap_or(1);
    let plain = is_find && args.is_truthy(4);
    let (subject_bytes, pattern_bytes) = (subject.as_bytes(), pattern.as_bytes());
    let start = start_offset(init, subject_bytes.len());
    if start > subject_bytes.len() {
        return Ok(vec![Value::Nil]);
    }
    metered(&context.guard, |budget| {
        if is_find && (plain || pattern::is_plain(&pattern_bytes)) {
            let found = pattern::find_plain(&subject_bytes, &pattern_bytes, start, budget)?;
            return Ok(match found {
                Some(at) => vec![position(at + 1), position(at + pattern_bytes.len())],
                None => vec![Value::Nil],
            });
        }
        let Some(found) = pattern::find(&subject_bytes, &pattern_bytes, start, budget)? else {
            return Ok(vec![Value::Nil]);
        };
        if !is_find {
            return capture_values(lua, &subject_bytes, found.captures_or_whole()?);
        }
        let mut values = vec![position(found.start + 1), position(found.end)];
        values.extend(capture_values(lua, &subject_bytes, found.captures()?)?);
        Ok(values)
    })
}

/// `string.gmatch(s, pattern [, init])`: returns the iterator function.
fn gmatch(lua: &Lua, context: &Context, args: Args) -> Result<Vec<Value>, Failure> {
    let subject = args.string(lua, 1)?;
    let pattern = args.string(lua, 2)?;
    let init = args.optional_integer(lua, 3)?.unwrap_or(1);
    let len = subject.as_bytes().len();
    let iteration = Mutex::new(Iteration::new(start_offset(init, len).min(len + 1)));
    let context = context.clone();
    let raw = lua.create_function(move |lua, _: MultiValue| {
        let result = metered(&context.guard, |budget| {
            let mut iteration = iteration.lock().unwrap_or_else(PoisonError::into_inner);
            let subject_bytes = subject.as_bytes();
            match iteration.next(&subject_bytes, &pattern.as_bytes(), budget)? {
                Some(found) => capture_values(lua, &subject_bytes, found.captures_or_whole()?),
                None => Ok(Vec::new()),
            }
        });
        finish(lua, &context.guard, result)
    })?;
    Ok(vec![Value::Function(shim::wrap(lua, raw)?)])
}

/// `string.gsub(s, pattern, repl [, n])`: returns the new string and the
/// number of matches replaced.
fn gsub(lua: &Lua, context: &Context, args: Args) -> Result<Vec<Value>, Failure> {
    let subject = args.string(lua, 1)?;
    let pattern = args.string(lua, 2)?;
    let max_count = args
        .optional_integer(lua, 4)?
        .map(|max| u64::try_from(max).unwrap_or(0));
    let kind = match args.value(3) {
        Value::String(text) => Kind::Template(text),
        number @ (Value::Integer(_) | Value::Number(_)) => match lua.coerce_string(number)? {
            Some(text) => Kind::Template(text),
            None => return Err(args.bad(lua, 3, "string/function/table expected, got number")),
        },
        Value::Table(table) => Kind::Table(table),
        Value::Function(function) => Kind::Function(function),
        _ => {
            let got = args.type_name(3);
            return Err(args.bad(
                lua,
                3,
                &format!("string/function/table expected, got {got}"),
            ));
        }
    };
    let max_bytes = context.guard.result_budget_bytes();
    let mut replacement = Replacement {
        lua,
        kind,
        raw_pcall: &context.raw_pcall,
        max_bytes,
    };
    let subject_bytes = subject.as_bytes();
    let substitution = metered(&context.guard, |budget| {
        pattern::substitute(
            &subject_bytes,
            &pattern.as_bytes(),
            max_count,
            max_bytes,
            budget,
            &mut replacement,
        )
    })?;
    let text = match substitution.text {
        Some(text) => lua.create_string(text)?,
        // Lua returns its first argument, which it has already turned into a
        // string if it was a number.
        None => subject.clone(),
    };
    let count = i64::try_from(substitution.count).unwrap_or(i64::MAX);
    Ok(vec![Value::String(text), Value::Integer(count)])
}

/// The kinds of `repl` argument `gsub` accepts.
enum Kind {
    /// A string (or number) with `%0`-`%9` and `%%` escapes.
    Template(LuaString),
    /// A table indexed by the first capture.
    Table(Table),
    /// A function called with the captures.
    Function(Function),
}

/// `gsub`'s replacement, as [`pattern::substitute`] applies it.
struct Replacement<'l> {
    lua: &'l Lua,
    kind: Kind,
    raw_pcall: &'l Function,
    /// Largest output allowed (the memory limit).
    max_bytes: usize,
}

impl Replace for Replacement<'_> {
    type Error = Failure;

    fn replace(
        &mut self,
        subject: &[u8],
        found: &Match,
        out: &mut Vec<u8>,
    ) -> Result<bool, Failure> {
        let value = match &self.kind {
            Kind::Template(text) => {
                let mut template = Template {
                    text: &text.as_bytes(),
                    max_bytes: self.max_bytes,
                };
                return Ok(template.replace(subject, found, out)?);
            }
            Kind::Table(table) => {
                let key = capture_value(self.lua, subject, found.capture(0)?)?;
                table.get::<Value>(key)?
            }
            Kind::Function(function) => {
                let mut call = vec![Value::Function(function.clone())];
                call.extend(capture_values(
                    self.lua,
                    subject,
                    found.captures_or_whole()?,
                )?);
                let mut results = self
                    .raw_pcall
                    .call::<MultiValue>(MultiValue::from_vec(call))?
                    .into_iter();
                let succeeded = matches!(results.next(), Some(Value::Boolean(true)));
                let first = results.next().unwrap_or(Value::Nil);
                if !succeeded {
                    return Err(Failure::Rethrow(first));
                }
                first
            }
        };
        self.append(value, &subject[found.start..found.end], out)
    }
}

impl Replacement<'_> {
    /// Appends a table's or function's answer: false or nil keep `original`.
    fn append(&self, value: Value, original: &[u8], out: &mut Vec<u8>) -> Result<bool, Failure> {
        match value {
            Value::Nil | Value::Boolean(false) => {
                out.extend_from_slice(original);
                Ok(false)
            }
            Value::String(text) => {
                out.extend_from_slice(&text.as_bytes());
                Ok(true)
            }
            number @ (Value::Integer(_) | Value::Number(_)) => {
                if let Some(text) = self.lua.coerce_string(number)? {
                    out.extend_from_slice(&text.as_bytes());
                }
                Ok(true)
            }
            other => Err(Failure::Message(format!(
                "invalid replacement value (a {})",
                lua_type_name(&other)
            ))),
        }
    }
}

/// The arguments of one call, checked as Lua's auxiliary library does.
struct Args {
    /// The function's name in error messages, e.g. `find`.
    function: &'static str,
    values: Vec<Value>,
}

impl Args {
    /// Argument `index` (1-based), nil when absent.
    fn value(&self, index: usize) -> Value {
        self.values.get(index - 1).cloned().unwrap_or(Value::Nil)
    }

    fn type_name(&self, index: usize) -> &'static str {
        self.values.get(index - 1).map_or("no value", lua_type_name)
    }

    /// A bad-argument error as `luaL_argerror` words it: in a method call
    /// (`s:find(...)`) the receiver is not counted, and a bad receiver is
    /// "bad self".
    fn bad(&self, lua: &Lua, index: usize, detail: &str) -> Failure {
        let function = self.function;
        // Level 0 is this Rust function, level 1 the shim the script called.
        let is_method = lua
            .inspect_stack(1, |frame| frame.names().name_what == Some("method"))
            .unwrap_or(false);
        Failure::Message(match (is_method, index) {
            (true, 1) => format!("calling '{function}' on bad self ({detail})"),
            (true, _) => format!("bad argument #{} to '{function}' ({detail})", index - 1),
            (false, _) => format!("bad argument #{index} to '{function}' ({detail})"),
        })
    }

    /// A string argument; numbers are converted, as `luaL_checklstring` does.
    fn string(&self, lua: &Lua, index: usize) -> Result<LuaString, Failure> {
        match lua.coerce_string(self.value(index))? {
            Some(text) => Ok(text),
            None => {
                let got = self.type_name(index);
                Err(self.bad(lua, index, &format!("string expected, got {got}")))
            }
        }
    }

    /// An optional integer argument (`None` when absent or nil).
    fn optional_integer(&self, lua: &Lua, index: usize) -> Result<Option<i64>, Failure> {
        let value = self.value(index);
        if value.is_nil() {
            return Ok(None);
        }
        if let Some(integer) = lua.coerce_integer(value.clone())? {
            return Ok(Some(integer));
        }
        if lua.coerce_number(value)?.is_some() {
            return Err(self.bad(lua, index, "number has no integer representation"));
        }
        let got = self.type_name(index);
        Err(self.bad(lua, index, &format!("number expected, got {got}")))
    }

    fn is_truthy(&self, index: usize) -> bool {
        !matches!(self.value(index), Value::Nil | Value::Boolean(false))
    }
}

/// Lua's name for the type of `value`, as its error messages use it.
fn lua_type_name(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) | Value::Number(_) => "number",
        Value::LightUserData(_) | Value::UserData(_) | Value::Error(_) => "userdata",
        other => other.type_name(),
    }
}

/// Lua's `posrelatI(init, len) - 1`: the 0-based byte where a search starts;
/// past the end when `init` is beyond `len + 1`.
fn start_offset(init: i64, len: usize) -> usize {
    let len_signed = i64::try_from(len).unwrap_or(i64::MAX);
    if init > 0 {
        usize::try_from(init - 1).unwrap_or(usize::MAX)
    } else if init == 0 || init < -len_signed {
        0
    } else {
        // -len <= init < 0, so this is within 0..len.
        usize::try_from(len_signed + init).unwrap_or(0)
    }
}

/// A 1-based subject position as a Lua integer.
fn position(at: usize) -> Value {
    Value::Integer(i64::try_from(at).unwrap_or(i64::MAX))
}

fn capture_value(lua: &Lua, subject: &[u8], capture: Capture) -> mlua::Result<Value> {
    match capture {
        Capture::Text { start, end } => Ok(Value::String(lua.create_string(&subject[start..end])?)),
        Capture::Position(at) => Ok(position(at)),
    }
}

fn capture_values(
    lua: &Lua,
    subject: &[u8],
    captures: Vec<Capture>,
) -> Result<Vec<Value>, Failure> {
    let values = captures
        .into_iter()
        .map(|capture| capture_value(lua, subject, capture))
        .collect::<mlua::Result<Vec<Value>>>()?;
    Ok(values)
}
