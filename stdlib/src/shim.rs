//! The shim between script-visible functions and their Rust implementations
//! ("raw" functions), so that their errors read like Lua's own.
//!
//! A raw function returns a status followed by its values:
//! - `true, ...`: the call succeeded and returns `...`;
//! - `false, message`: the call failed; a string message is raised prefixed
//!   with the caller's position (`script.lua:3: member "x" not found`), as
//!   Lua's `luaL_error` does, and `pcall` can catch it;
//! - `nil, value`: script code that the raw function called (a `gsub`
//!   replacement function) raised `value`, which is re-raised unchanged.
//!
//! [`wrap`] puts the C function [`shim`] around a raw function. The shim is C
//! rather than Lua because Lua never tail-calls C functions: `return
//! cluster.member("x")` keeps the script's frame, so the position is always
//! known. Limits are not raised through this protocol: a raw function that
//! trips one returns an `mlua` error, which the guard's latch keeps fatal.

use std::os::raw::c_int;

use mlua::{ffi, Function, Lua, Value};

/// What a raw function reports to the script: a value or an error message.
pub(crate) type Outcome = Result<Value, String>;

/// Converts an outcome into the `(status, value)` pair the shim expects.
pub(crate) fn reply(lua: &Lua, outcome: Outcome) -> mlua::Result<(bool, Value)> {
    match outcome {
        Ok(value) => Ok((true, value)),
        Err(message) => Ok((false, Value::String(lua.create_string(message)?))),
    }
}

/// Wraps `raw` in the shim, giving the function scripts call.
pub(crate) fn wrap(lua: &Lua, raw: Function) -> mlua::Result<Function> {
    // SAFETY: the closure only pushes a C closure over the argument (`raw`),
    // which `exec_raw` placed on the stack; `shim` upholds the Lua C API rules.
    unsafe { lua.exec_raw(raw, |state| ffi::lua_pushcclosure(state, shim, 1)) }
}

/// Calls its upvalue (a raw function) with the arguments and returns its
/// values, or raises its error as the module documentation describes.
unsafe extern "C-unwind" fn shim(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: a C function always has its upvalue and LUA_MINSTACK free slots;
    // `lua_callk` with a continuation lets async raw functions yield through us.
    unsafe {
        let nargs = ffi::lua_gettop(state);
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        ffi::lua_callk(state, nargs, ffi::LUA_MULTRET, 0, Some(shim_finish));
        shim_finish(state, ffi::LUA_OK, 0)
    }
}

/// Second half of [`shim`], also run as the continuation after a yield; the
/// stack holds exactly the raw function's results, status first.
unsafe extern "C-unwind" fn shim_finish(
    state: *mut ffi::lua_State,
    _status: c_int,
    _ctx: ffi::lua_KContext,
) -> c_int {
    // SAFETY: the results are on the stack (Lua made room for them); after
    // `lua_settop(state, 2)`, `luaL_where` pushes one more value, within the
    // LUA_MINSTACK slots a C function is guaranteed.
    unsafe {
        let results = ffi::lua_gettop(state);
        if ffi::lua_toboolean(state, 1) != 0 {
            return results - 1;
        }
        let with_position = ffi::lua_type(state, 1) == ffi::LUA_TBOOLEAN;
        ffi::lua_settop(state, 2);
        if with_position && ffi::lua_type(state, 2) == ffi::LUA_TSTRING {
            ffi::luaL_where(state, 1);
            ffi::lua_insert(state, -2);
            ffi::lua_concat(state, 2);
        }
        ffi::lua_error(state)
    }
}
