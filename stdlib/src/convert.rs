//! Lua ⇄ JSON conversion.
//!
//! JSON to Lua: `null` becomes `nil`, objects become tables and arrays become
//! sequences.
//!
//! Lua to JSON: a table whose keys are all positive integers becomes an array
//! (holes become `null`, an empty table becomes `[]`); any other table becomes
//! an object whose number keys are written as strings. Functions, coroutines,
//! userdata, NaN, infinities and non-UTF-8 strings are rejected with a message
//! naming the problem. The conversion runs in Rust, outside the instruction
//! budget, so its output is bounded by a byte budget: a script cannot make it
//! expand a table that refers to itself, or the same table many times, without
//! end.

use mlua::{Lua, Table, Value};
use serde_json::{Map, Value as Json};

/// Deepest table nesting converted to JSON.
const MAX_DEPTH: usize = 128;

/// What each converted value counts against the byte budget, besides string bytes.
const VALUE_COST_BYTES: usize = 16;

/// Converts JSON to a Lua value.
///
/// Walked by hand rather than through serde: serde_json's `arbitrary_precision` (which the
/// Starlark interpreter switches on for the whole binary) serializes a number as a private
/// one-field map, which a generic serializer would turn into a table.
pub(crate) fn json_to_lua(lua: &Lua, value: &Json) -> mlua::Result<Value> {
    Ok(match value {
        Json::Null => Value::Nil,
        Json::Bool(flag) => Value::Boolean(*flag),
        Json::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(integer), _) => Value::Integer(integer),
            (None, Some(float)) => Value::Number(float),
            (None, None) => Value::Nil,
        },
        Json::String(text) => Value::String(lua.create_string(text)?),
        Json::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (index, item) in items.iter().enumerate() {
                table.raw_set(index + 1, json_to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Json::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (key, item) in map {
                table.raw_set(key.as_str(), json_to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

/// Converts a Lua value to JSON of at most about `budget_bytes`, or explains
/// why it cannot be converted.
pub(crate) fn lua_to_json(value: &Value, budget_bytes: usize) -> Result<Json, String> {
    ToJson {
        remaining_bytes: budget_bytes,
        depth: 0,
    }
    .value(value)
}

struct ToJson {
    remaining_bytes: usize,
    depth: usize,
}

impl ToJson {
    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        match self.remaining_bytes.checked_sub(bytes) {
            Some(remaining) => {
                self.remaining_bytes = remaining;
                Ok(())
            }
            None => Err("the value is larger than the script's memory limit allows".to_string()),
        }
    }

    fn value(&mut self, value: &Value) -> Result<Json, String> {
        self.charge(VALUE_COST_BYTES)?;
        match value {
            Value::Nil => Ok(Json::Null),
            Value::Boolean(flag) => Ok(Json::Bool(*flag)),
            Value::Integer(integer) => Ok(Json::from(*integer)),
            Value::Number(number) => serde_json::Number::from_f64(*number)
                .map(Json::Number)
                .ok_or_else(|| format!("the number {number} has no JSON form")),
            Value::String(text) => {
                let bytes = text.as_bytes();
                self.charge(bytes.len())?;
                match std::str::from_utf8(&bytes) {
                    Ok(text) => Ok(Json::String(text.to_string())),
                    Err(_) => Err("a string is not valid UTF-8 text".to_string()),
                }
            }
            Value::Table(table) => self.table(table),
            other => Err(format!("it contains a {}", other.type_name())),
        }
    }

    fn table(&mut self, table: &Table) -> Result<Json, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "tables are nested more than {MAX_DEPTH} deep (does a table contain itself?)"
            ));
        }
        let mut entries = Vec::new();
        table
            .for_each(|key: Value, value: Value| {
                entries.push((key, value));
                Ok(())
            })
            .map_err(|err| err.to_string())?;
        self.depth += 1;
        let converted = match array_len(&entries) {
            Some(len) => self.array(entries, len),
            None => self.object(entries),
        };
        self.depth -= 1;
        converted
    }

    fn array(&mut self, entries: Vec<(Value, Value)>, len: usize) -> Result<Json, String> {
        self.charge(len.saturating_mul(VALUE_COST_BYTES))?;
        let mut items = vec![Json::Null; len];
        for (key, value) in entries {
            if let Value::Integer(index) = key {
                let slot = usize::try_from(index - 1)
                    .ok()
                    .and_then(|at| items.get_mut(at));
                if let Some(slot) = slot {
                    *slot = self.value(&value)?;
                }
            }
        }
        Ok(Json::Array(items))
    }

    fn object(&mut self, entries: Vec<(Value, Value)>) -> Result<Json, String> {
        let mut object = Map::new();
        for (key, value) in entries {
            let key = match key {
                Value::String(text) => text
                    .to_str()
                    .map_err(|_| "a table key is not valid UTF-8 text")?
                    .to_string(),
                Value::Integer(integer) => integer.to_string(),
                Value::Number(number) => number.to_string(),
                other => {
                    return Err(format!(
                        "table keys must be strings or numbers, found a {} key",
                        other.type_name()
                    ))
                }
            };
            self.charge(key.len())?;
            let value = self.value(&value)?;
            object.insert(key, value);
        }
        Ok(Json::Object(object))
    }
}

/// The array length if every key is a positive integer and the table is not
/// too sparse (`{[1000000] = 1}` is an object, `{1, nil, 3}` an array).
fn array_len(entries: &[(Value, Value)]) -> Option<usize> {
    let mut len = 0;
    for (key, _) in entries {
        match key {
            Value::Integer(index) if *index >= 1 => len = len.max(usize::try_from(*index).ok()?),
            _ => return None,
        }
    }
    (len <= entries.len().saturating_mul(2)).then_some(len)
}
