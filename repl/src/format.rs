//! Output formats of the command line, as `lxc` has them: table, json, yaml, csv.

use serde_json::Value;

/// How a command prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// Comma-separated values, no header (as `lxc` prints it).
    Csv,
    /// One line per event, for people (`monitor`'s default); elsewhere the same as `table`.
    Pretty,
}

/// A column of a table: its header and the field it shows.
pub struct Column {
    /// Header text.
    pub header: &'static str,
    /// Field name in each row object.
    pub field: &'static str,
}

/// The YAML value of a JSON value, converted by hand: with serde_json's `arbitrary_precision`
/// (which the Starlark interpreter switches on for the whole binary) a JSON number serializes
/// as a private one-field map, which serde_yaml would print as such.
fn yaml(value: &Value) -> serde_yaml::Value {
    match value {
        Value::Null => serde_yaml::Value::Null,
        Value::Bool(flag) => serde_yaml::Value::Bool(*flag),
        Value::Number(number) => match (number.as_u64(), number.as_i64(), number.as_f64()) {
            (Some(unsigned), _, _) => serde_yaml::Value::Number(unsigned.into()),
            (None, Some(signed), _) => serde_yaml::Value::Number(signed.into()),
            (None, None, Some(float)) => serde_yaml::Value::Number(float.into()),
            (None, None, None) => serde_yaml::Value::String(number.to_string()),
        },
        Value::String(text) => serde_yaml::Value::String(text.clone()),
        Value::Array(items) => serde_yaml::Value::Sequence(items.iter().map(yaml).collect()),
        Value::Object(map) => serde_yaml::Value::Mapping(
            map.iter()
                .map(|(key, item)| (serde_yaml::Value::String(key.clone()), yaml(item)))
                .collect(),
        ),
    }
}

/// Renders `value` (a list of objects for tables) in `format`.
pub fn render(value: &Value, format: Format, columns: &[Column]) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
        Format::Yaml => serde_yaml::to_string(&yaml(value))
            .unwrap_or_default()
            .trim_end()
            .to_string(),
        Format::Csv => rows(value, columns)
            .iter()
            .map(|row| csv_line(row))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Table | Format::Pretty => table(&rows(value, columns), columns),
    }
}

/// Renders a value whose shape is not known in advance (the REPL's results): in `Table`, a
/// list of records becomes a table whose columns are their fields in order of first
/// appearance (those that name a record first; nested values as compact JSON); anything else
/// prints as JSON.
pub fn render_auto(value: &Value, format: Format) -> String {
    let records = match value {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => items,
        _ if format == Format::Table => {
            return serde_json::to_string_pretty(value).unwrap_or_default()
        }
        _ => return render(value, format, &[]),
    };
    if format != Format::Table {
        return render(value, format, &[]);
    }
    let mut fields: Vec<&str> = Vec::new();
    for record in records {
        for key in record.as_object().into_iter().flat_map(|map| map.keys()) {
            if !fields.contains(&key.as_str()) {
                fields.push(key);
            }
        }
    }
    // What names a record comes first (`id`, `name`, `server_name`, `key`), the rest in order.
    fields.sort_by_key(|field| !matches!(*field, "id" | "name" | "server_name" | "key"));
    let headers: Vec<String> = fields.iter().map(|field| field.to_uppercase()).collect();
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            fields
                .iter()
                .map(|field| match record.get(*field) {
                    Some(Value::Array(items)) if items.iter().all(|item| !item.is_object()) => {
                        cell(record.get(*field))
                    }
                    Some(nested @ (Value::Object(_) | Value::Array(_))) => nested.to_string(),
                    other => cell(other),
                })
                .collect()
        })
        .collect();
    table_with(&headers, &rows)
}

fn rows(value: &Value, columns: &[Column]) -> Vec<Vec<String>> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|column| cell(item.get(column.field)))
                .collect()
        })
        .collect()
}

/// A cell's text: lists one item per line, as `lxc` shows roles.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| cell(Some(item)))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
    }
}

fn csv_line(row: &[String]) -> String {
    row.iter()
        .map(|field| {
            let field = field.replace('\n', ",");
            if field.contains([',', '"', '\n']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn table(rows: &[Vec<String>], columns: &[Column]) -> String {
    let headers: Vec<String> = columns
        .iter()
        .map(|column| column.header.to_string())
        .collect();
    table_with(&headers, rows)
}

fn table_with(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(String::len).collect();
    for row in rows {
        for (index, field) in row.iter().enumerate() {
            let widest = field.lines().map(str::len).max().unwrap_or(0);
            widths[index] = widths[index].max(widest);
        }
    }
    let rule = format!(
        "+{}+",
        widths
            .iter()
            .map(|width| "-".repeat(width + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = vec![rule.clone()];
    out.extend(table_row(headers, &widths));
    out.push(rule.clone());
    for row in rows {
        out.extend(table_row(row, &widths));
        out.push(rule.clone());
    }
    out.join("\n")
}

/// One table row, as many lines as its tallest cell.
fn table_row(row: &[String], widths: &[usize]) -> Vec<String> {
    let height = row
        .iter()
        .map(|field| field.lines().count().max(1))
        .max()
        .unwrap_or(1);
    (0..height)
        .map(|line| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(field, width)| {
                    format!(" {:<width$} ", field.lines().nth(line).unwrap_or(""))
                })
                .collect();
            format!("|{}|", cells.join("|"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Goal: numbers print as numbers in YAML whatever serde_json's features (the Starlark
    /// interpreter turns on `arbitrary_precision`, under which they printed as a private map).
    #[test]
    fn yaml_numbers_are_numbers() {
        let value = serde_json::json!({"count": 3, "ratio": 0.5, "list": [1, -2]});
        let text = super::render(&value, super::Format::Yaml, &[]);
        assert!(text.contains("count: 3"), "{text}");
        assert!(text.contains("ratio: 0.5"), "{text}");
        assert!(text.contains("- -2"), "{text}");
        assert!(!text.contains("serde_json"), "{text}");
    }

    use super::*;
    use serde_json::json;

    const COLUMNS: &[Column] = &[
        Column {
            header: "NAME",
            field: "server_name",
        },
        Column {
            header: "ROLES",
            field: "roles",
        },
    ];

    #[test]
    fn records_of_any_shape_make_a_table() {
        let value =
            json!([{"name": "a", "n": 1}, {"name": "b", "tags": ["x", "y"], "deep": {"k": 1}}]);
        let table = render_auto(&value, Format::Table);
        assert!(table.contains("| NAME | N | DEEP    | TAGS |"), "{table}");
        assert!(table.contains("| b    |   | {\"k\":1} | x    |"), "{table}");
        assert_eq!(render_auto(&json!(2), Format::Table), "2");
        assert!(render_auto(&value, Format::Json).contains("\"name\": \"a\""));
        assert!(render_auto(&json!([]), Format::Table).contains("[]"));
    }

    #[test]
    fn table_and_csv() {
        let value = json!([{"server_name": "m1", "roles": ["database-leader", "database"]}, {"server_name": "m2", "roles": []}]);
        let table = render(&value, Format::Table, COLUMNS);
        assert!(table.contains("| m1   | database-leader |"), "{table}");
        assert!(table.contains("|      | database        |"), "{table}");
        let csv = render(&value, Format::Csv, COLUMNS);
        assert_eq!(csv, "m1,\"database-leader,database\"\nm2,");
        assert!(render(&value, Format::Yaml, COLUMNS).contains("server_name: m1"));
    }
}
