//! A continuous query as users write it: a `.sql` file whose name is the query's name, with
//! named parameters and their defaults declared in `-- @param name = value` comment lines.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::scalar::ScalarValue;

use crate::error::{Error, Result};

/// A query's definition: name, SQL text and parameter values.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryDef {
    pub name: String,
    pub sql: String,
    pub params: BTreeMap<String, ScalarValue>,
}

impl QueryDef {
    /// Parses SQL text, taking parameter defaults from its `-- @param` lines.
    pub fn parse(name: &str, sql: &str) -> Result<Self> {
        validate_name(name)?;
        let mut params = BTreeMap::new();
        for (i, line) in sql.lines().enumerate() {
            let Some(decl) = line.trim().strip_prefix("--").map(str::trim) else {
                continue;
            };
            let Some(decl) = decl.strip_prefix("@param") else {
                continue;
            };
            let (pname, value) = decl.split_once('=').ok_or_else(|| {
                Error::Refused(format!(
                    "{name}: line {}: expected `-- @param NAME = VALUE`, e.g. `-- @param threshold = 11800`",
                    i + 1
                ))
            })?;
            let pname = pname.trim().trim_start_matches('$');
            if pname.is_empty() || !pname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::Refused(format!(
                    "{name}: line {}: bad parameter name {pname:?}",
                    i + 1
                )));
            }
            params.insert(
                pname.to_string(),
                parse_literal(value.trim()).map_err(|e| {
                    Error::Refused(format!("{name}: line {}: parameter {pname}: {e}", i + 1))
                })?,
            );
        }
        Ok(Self {
            name: name.to_string(),
            sql: sql.to_string(),
            params,
        })
    }

    /// Loads every `*.sql` file of a directory, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::Config(format!("queries directory {}: {e}", dir.display())))?;
        let mut defs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("sql") {
                continue;
            }
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            defs.push(Self::parse(&name, &sql)?);
        }
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(defs)
    }
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok && name != "telemetry" {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "query name {name:?} is not usable: use lowercase letters, digits and _ (and not `telemetry`)"
        )))
    }
}

/// Parses a parameter value written as a SQL literal: `11500`, `2.5`, `'VER'`, `true`.
pub(crate) fn parse_literal(text: &str) -> std::result::Result<ScalarValue, String> {
    let t = text.trim();
    if let Some(s) = t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Ok(ScalarValue::Utf8(Some(s.replace("''", "'"))));
    }
    match t.to_ascii_lowercase().as_str() {
        "true" => return Ok(ScalarValue::Boolean(Some(true))),
        "false" => return Ok(ScalarValue::Boolean(Some(false))),
        "null" => return Ok(ScalarValue::Null),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Ok(ScalarValue::Int64(Some(i)));
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Ok(ScalarValue::Float64(Some(f)));
    }
    Err(format!(
        "{t:?} is not a number, a 'quoted string' or true/false"
    ))
}

/// A parameter value as SQL literal text.
pub(crate) fn literal_text(v: &ScalarValue) -> String {
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
            format!("'{}'", s.replace('\'', "''"))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_come_from_comment_lines() {
        let def = QueryDef::parse(
            "over_rev",
            "-- Over-revs.\n-- @param threshold = 11800\n-- @param who='VER'\nSELECT 1",
        )
        .unwrap();
        assert_eq!(def.params["threshold"], ScalarValue::Int64(Some(11800)));
        assert_eq!(def.params["who"], ScalarValue::Utf8(Some("VER".into())));
    }

    #[test]
    fn bad_declarations_are_refused_with_the_line() {
        let err = QueryDef::parse("q", "SELECT 1\n-- @param x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(QueryDef::parse("Bad-Name", "SELECT 1").is_err());
        assert!(QueryDef::parse("telemetry", "SELECT 1").is_err());
    }

    #[test]
    fn literals() {
        assert_eq!(
            parse_literal("2.5").unwrap(),
            ScalarValue::Float64(Some(2.5))
        );
        assert_eq!(
            parse_literal("'it''s'").unwrap(),
            ScalarValue::Utf8(Some("it's".into()))
        );
        assert!(parse_literal("eleven").is_err());
        assert_eq!(
            literal_text(&ScalarValue::Utf8(Some("a'b".into()))),
            "'a''b'"
        );
    }
}
