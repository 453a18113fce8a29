//! Lua ⇄ JSON conversion.
//!
//! JSON `null` becomes `nil`, objects become tables and arrays become sequences
//! (tagged so they convert back to arrays even when empty). In the other
//! direction an empty table becomes `[]`, and functions, coroutines and userdata
//! are rejected with a message naming the type.

use mlua::serde::{DeserializeOptions, SerializeOptions};
use mlua::{Lua, LuaSerdeExt, Value};

/// Converts a Lua value to JSON, or explains why it cannot be.
pub(crate) fn lua_to_json(lua: &Lua, value: Value) -> Result<serde_json::Value, String> {
    let options = DeserializeOptions::new()
        .encode_empty_tables_as_array(true)
        .detect_mixed_tables(true);
    lua.from_value_with(value, options)
        .map_err(|err| describe(&err))
}

/// Converts JSON to a Lua value.
pub(crate) fn json_to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(value, options)
}

fn describe(err: &mlua::Error) -> String {
    match err {
        mlua::Error::DeserializeError(message) | mlua::Error::SerializeError(message) => {
            message.clone()
        }
        other => other.to_string(),
    }
}
