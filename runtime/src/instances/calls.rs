//! `instances.*` script calls read into [`InstanceOperation`]s: positional arguments and an
//! options table, with errors that name the built-in and the argument.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use starling_store::instances::{Devices, DEFAULT_PROJECT};

use super::ops::{CreateRequest, InstanceOperation, DEFAULT_STOP_TIMEOUT_S};
use crate::Error;

/// Reads the call `name(args)` of an `instances.*` built-in.
pub fn from_call(name: &str, args: &[Value]) -> Result<InstanceOperation, Error> {
    let call = Call { name, args };
    let operation = match name {
        "instances.launch" => InstanceOperation::Create(call.create(true)?),
        "instances.create" => InstanceOperation::Create(call.create(false)?),
        "instances.start" => InstanceOperation::Start {
            project: call.project(1)?,
            name: call.string(0, "name")?,
        },
        "instances.stop" | "instances.restart" => {
            let options = call.options(1)?;
            let project = call.project(1)?;
            let force = call.flag(&options, "force")?;
            let timeout_s = call.timeout(&options)?;
            let name = call.string(0, "name")?;
            if call.name == "instances.stop" {
                InstanceOperation::Stop {
                    project,
                    name,
                    force,
                    timeout_s,
                }
            } else {
                InstanceOperation::Restart {
                    project,
                    name,
                    force,
                    timeout_s,
                }
            }
        }
        "instances.delete" => {
            let options = call.options(1)?;
            InstanceOperation::Delete {
                project: call.project(1)?,
                name: call.string(0, "name")?,
                force: call.flag(&options, "force")?,
            }
        }
        "instances.list" => InstanceOperation::List {
            project: call.project(0)?,
        },
        "instances.get" => InstanceOperation::Get {
            project: call.project(1)?,
            name: call.string(0, "name")?,
        },
        "instances.state" => InstanceOperation::State {
            project: call.project(1)?,
            name: call.string(0, "name")?,
        },
        "instances.exec" => {
            let options = call.options(2)?;
            InstanceOperation::Exec {
                project: call.project(2)?,
                name: call.string(0, "name")?,
                argv: call.strings(args.get(1), "argv")?,
                env: call.map(options.get("env"), "env")?,
                cwd: call.optional_text(&options, "cwd")?,
            }
        }
        "instances.set" => InstanceOperation::Set {
            project: call.project(3)?,
            name: call.string(0, "name")?,
            key: call.string(1, "key")?,
            value: Some(call.scalar(args.get(2), "value")?),
        },
        "instances.unset" => InstanceOperation::Set {
            project: call.project(2)?,
            name: call.string(0, "name")?,
            key: call.string(1, "key")?,
            value: None,
        },
        "instances.move" => {
            let options = call.options(1)?;
            InstanceOperation::Move {
                project: call.project(1)?,
                name: call.string(0, "name")?,
                target: call.optional_text(&options, "target")?.unwrap_or_default(),
            }
        }
        "instances.moves" => InstanceOperation::Moves,
        _ => return Err(Error::Refused(format!("unknown built-in {name}"))),
    };
    Ok(operation)
}

/// A call's name and arguments.
struct Call<'a> {
    name: &'a str,
    args: &'a [Value],
}

impl Call<'_> {
    fn refused(&self, message: String) -> Error {
        Error::Refused(format!("{}: {message}", self.name))
    }

    fn string(&self, position: usize, what: &str) -> Result<String, Error> {
        match self.args.get(position) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.refused(format!(
                "argument #{} ({what}) must be a string, not a {}",
                position + 1,
                kind(other)
            ))),
            None => Err(self.refused(format!("argument #{} ({what}) is missing", position + 1))),
        }
    }

    /// The options table at `position` (absent: empty).
    fn options(&self, position: usize) -> Result<Map<String, Value>, Error> {
        match self.args.get(position) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Array(items)) if items.is_empty() => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map.clone()),
            Some(other) => Err(self.refused(format!(
                "argument #{} (options) must be a table, not a {}",
                position + 1,
                kind(other)
            ))),
        }
    }

    /// `project=` of the options table at `position`, `default` when absent.
    fn project(&self, position: usize) -> Result<String, Error> {
        let options = self.options(position)?;
        Ok(self
            .optional_text(&options, "project")?
            .unwrap_or_else(|| DEFAULT_PROJECT.to_string()))
    }

    fn flag(&self, options: &Map<String, Value>, field: &str) -> Result<bool, Error> {
        match options.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => {
                Err(self.refused(format!("{field} must be a boolean, not a {}", kind(other))))
            }
        }
    }

    fn timeout(&self, options: &Map<String, Value>) -> Result<u64, Error> {
        match options.get("timeout") {
            None | Some(Value::Null) => Ok(DEFAULT_STOP_TIMEOUT_S),
            Some(Value::Number(number)) => number
                .as_f64()
                .filter(|seconds| (0.0..=3600.0).contains(seconds))
                .map(|seconds| seconds.ceil() as u64)
                .ok_or_else(|| self.refused("timeout must be 0 to 3600 seconds".to_string())),
            Some(other) => Err(self.refused(format!(
                "timeout must be a number of seconds, not a {}",
                kind(other)
            ))),
        }
    }

    fn optional_text(
        &self,
        options: &Map<String, Value>,
        field: &str,
    ) -> Result<Option<String>, Error> {
        match options.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self.scalar(Some(value), field).map(Some),
        }
    }

    fn scalar(&self, value: Option<&Value>, what: &str) -> Result<String, Error> {
        match value {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Number(number)) => Ok(number.to_string()),
            Some(Value::Bool(flag)) => Ok(flag.to_string()),
            Some(other) => {
                Err(self.refused(format!("{what} must be a string, not a {}", kind(other))))
            }
            None => Err(self.refused(format!("{what} is missing"))),
        }
    }

    /// A list of strings (an empty Lua table arrives as an empty object).
    fn strings(&self, value: Option<&Value>, what: &str) -> Result<Vec<String>, Error> {
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(map)) if map.is_empty() => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| self.scalar(Some(item), what))
                .collect(),
            Some(other) => Err(self.refused(format!(
                "{what} must be a list of strings, not a {}",
                kind(other)
            ))),
        }
    }

    /// A table of scalars, as strings.
    fn map(&self, value: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, Error> {
        match value {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Array(items)) if items.is_empty() => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(key, value)| {
                    Ok((
                        key.clone(),
                        self.scalar(Some(value), &format!("{what}.{key}"))?,
                    ))
                })
                .collect(),
            Some(other) => {
                Err(self.refused(format!("{what} must be a table, not a {}", kind(other))))
            }
        }
    }

    /// `devices={root={size="200MiB"}}`.
    fn devices(&self, value: Option<&Value>) -> Result<Devices, Error> {
        match value {
            None | Some(Value::Null) => Ok(Devices::new()),
            Some(Value::Array(items)) if items.is_empty() => Ok(Devices::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, keys)| Ok((name.clone(), self.map(Some(keys), "devices")?)))
                .collect(),
            Some(other) => {
                Err(self.refused(format!("devices must be a table, not a {}", kind(other))))
            }
        }
    }

    /// `launch{image=..., ...}`, or `launch(image [, {name=..., ...}])`.
    fn create(&self, start: bool) -> Result<CreateRequest, Error> {
        let (image, options) = match self.args.first() {
            Some(Value::String(image)) => (Some(image.clone()), self.options(1)?),
            _ => (None, self.options(0)?),
        };
        let known = [
            "image",
            "name",
            "target",
            "profiles",
            "config",
            "devices",
            "project",
            "description",
            "ephemeral",
        ];
        if let Some(unknown) = options.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(self.refused(format!(
                "unknown field \"{unknown}\" (fields: {})",
                known.join(", ")
            )));
        }
        let image = match image {
            Some(image) => image,
            None => self
                .optional_text(&options, "image")?
                .ok_or_else(|| self.refused("image= is missing".to_string()))?,
        };
        let profiles = match options.get("profiles") {
            None | Some(Value::Null) => None,
            given => Some(self.strings(given, "profiles")?),
        };
        Ok(CreateRequest {
            project: self
                .optional_text(&options, "project")?
                .unwrap_or_else(|| DEFAULT_PROJECT.to_string()),
            name: self.optional_text(&options, "name")?,
            image,
            target: self.optional_text(&options, "target")?,
            profiles,
            config: self.map(options.get("config"), "config")?,
            devices: self.devices(options.get("devices"))?,
            description: self
                .optional_text(&options, "description")?
                .unwrap_or_default(),
            start,
            ephemeral: self.flag(&options, "ephemeral")?,
        })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) | Value::Object(_) => "table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Goal: the table form and the positional form of launch read the same; options and
    /// their defaults; mistakes name the built-in and the argument.
    #[test]
    fn reads_calls() {
        let table = from_call(
            "instances.launch",
            &[
                json!({"image": "bb", "name": "c1", "target": "m2", "profiles": ["default"],
                     "config": {"limits.memory": "256MiB", "limits.cpu": 2},
                     "devices": {"root": {"size": "200MiB"}}}),
            ],
        )
        .unwrap();
        let InstanceOperation::Create(request) = table else {
            panic!("{table:?}")
        };
        assert_eq!(request.image, "bb");
        assert_eq!(request.name.as_deref(), Some("c1"));
        assert_eq!(request.target.as_deref(), Some("m2"));
        assert_eq!(request.project, DEFAULT_PROJECT);
        assert_eq!(request.config["limits.cpu"], "2");
        assert_eq!(request.devices["root"]["size"], "200MiB");
        assert!(request.start);
        let positional = from_call("instances.create", &[json!("bb")]).unwrap();
        assert!(
            matches!(positional, InstanceOperation::Create(CreateRequest { start: false, ref image, .. }) if image == "bb")
        );
        assert_eq!(
            from_call("instances.stop", &[json!("c1"), json!({"force": true})]).unwrap(),
            InstanceOperation::Stop {
                project: DEFAULT_PROJECT.into(),
                name: "c1".into(),
                force: true,
                timeout_s: DEFAULT_STOP_TIMEOUT_S
            }
        );
        let exec = from_call(
            "instances.exec",
            &[
                json!("c1"),
                json!(["sh", "-c", "exit 3"]),
                json!({"env": {"A": "1"}}),
            ],
        )
        .unwrap();
        assert!(
            matches!(exec, InstanceOperation::Exec { ref argv, ref env, .. } if argv.len() == 3 && env["A"] == "1")
        );
        let error = from_call("instances.launch", &[json!({"name": "c1"})])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("instances.launch: image= is missing"),
            "{error}"
        );
        let error = from_call("instances.launch", &[json!({"image": "x", "colour": 1})])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field \"colour\""), "{error}");
        let error = from_call("instances.start", &[]).unwrap_err().to_string();
        assert!(error.contains("argument #1 (name) is missing"), "{error}");
    }
}
