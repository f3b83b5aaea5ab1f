//! Python-flavoured JSON, as Python's `json` module writes it and so as diffusers'
//! `ConfigMixin.save_config` does: the bare tokens `Infinity`, `-Infinity` and `NaN` stand for
//! non-finite floats (`DPMSolverMultistepScheduler`'s default `lambda_min_clipped` is `-inf`, so
//! every DPM-Solver++ config diffusers saves holds one). serde_json has no non-finite numbers:
//! [`parse`] reads the tokens as the strings `"Infinity"`, `"-Infinity"` and `"NaN"`, [`as_f64`]
//! turns those into the floats Python gives them, and [`to_string_pretty`] writes them back bare.

use serde_json::Value;

/// The tokens and the floats Python reads them as.
pub const NON_FINITE: [(&str, f64); 3] = [
    ("-Infinity", f64::NEG_INFINITY),
    ("Infinity", f64::INFINITY),
    ("NaN", f64::NAN),
];

/// A malformed file: serde_json's message, at the line and column of the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct JsonError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

/// A bare token that starts at byte `i` of `text` (outside a string), if any.
fn token_at(text: &str, i: usize) -> Option<&'static str> {
    let rest = &text[i..];
    NON_FINITE.iter().map(|(t, _)| *t).find(|t| {
        rest.starts_with(t)
            && !rest[t.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Parses JSON that may hold Python's non-finite tokens (read as strings, see the module docs).
pub fn parse(text: &str) -> Result<Value, JsonError> {
    let mut out = String::with_capacity(text.len() + 16);
    // (line, byte column in `out` where a quoted token starts) of each rewrite: two bytes each.
    let mut shifts: Vec<(usize, usize)> = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    let (mut line, mut line_start) = (1usize, 0usize);
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().expect("in range");
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(t) = token_at(text, i) {
            shifts.push((line, out.len() - line_start + 1));
            out.push('"');
            out.push_str(t);
            out.push('"');
            i += t.len();
            continue;
        }
        out.push(c);
        if c == '\n' {
            line += 1;
            line_start = out.len();
        }
        i += c.len_utf8();
    }
    serde_json::from_str(&out).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let suffix = format!(" at line {line} column {column}");
        let message = e.to_string();
        let message = message
            .strip_suffix(&suffix)
            .unwrap_or(&message)
            .to_string();
        let before = shifts
            .iter()
            .filter(|(l, c)| *l == line && *c < column)
            .count();
        JsonError {
            message,
            line,
            column: column.saturating_sub(2 * before),
        }
    })
}

/// A number, or one of the non-finite tokens as [`parse`] reads them (also `inf`/`-inf`/`nan`
/// as Python's `str(float)` writes them).
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            s => NON_FINITE.iter().find(|(t, _)| *t == s).map(|(_, x)| *x),
        },
        _ => None,
    }
}

/// Pretty JSON as Python's `json.dumps(indent=2)` writes non-finite floats: the strings
/// [`parse`] made of the tokens are written back bare (keys stay strings).
pub fn to_string_pretty(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).expect("a Value serializes");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    'scan: while let Some(q) = rest.find('"') {
        let (head, tail) = rest.split_at(q);
        out.push_str(head);
        for (t, _) in NON_FINITE {
            let quoted = format!("\"{t}\"");
            if let Some(after) = tail.strip_prefix(quoted.as_str()) {
                if !after.trim_start().starts_with(':') {
                    out.push_str(t);
                    rest = after;
                    continue 'scan;
                }
            }
        }
        // Copy the whole string literal, escapes included.
        let mut end = 1;
        let bytes = tail.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        out.push_str(&tail[..=end.min(tail.len() - 1)]);
        rest = &tail[(end + 1).min(tail.len())..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DPMSolverMultistepScheduler().save_config()` of diffusers 0.42.1 writes this line.
    const DPM: &str = r#"{
  "_class_name": "DPMSolverMultistepScheduler",
  "lambda_min_clipped": -Infinity,
  "sample_max_value": 1.0,
  "name": "Infinity and NaN in a string stay",
  "list": [NaN, Infinity, -Infinity, 2]
}"#;

    #[test]
    fn python_tokens_read_as_floats_and_write_back_bare() {
        let v = parse(DPM).unwrap();
        assert_eq!(as_f64(&v["lambda_min_clipped"]), Some(f64::NEG_INFINITY));
        assert_eq!(v["name"], "Infinity and NaN in a string stay");
        let list: Vec<f64> = v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| as_f64(x).unwrap())
            .collect();
        assert!(list[0].is_nan() && list[1] == f64::INFINITY && list[2] == f64::NEG_INFINITY);
        let back = to_string_pretty(&v);
        assert!(
            back.contains("\"lambda_min_clipped\": -Infinity,"),
            "{back}"
        );
        assert!(
            back.contains("NaN,\n    Infinity,\n    -Infinity,"),
            "{back}"
        );
        assert!(
            back.contains("\"Infinity and NaN in a string stay\""),
            "{back}"
        );
        assert_eq!(parse(&back).unwrap(), v);
    }

    #[test]
    fn malformed_files_keep_the_line_and_column_of_the_text_given() {
        // serde_json's own error for the same mistake without the token: column 26.
        let plain = serde_json::from_str::<Value>("{\"a\": 1, \"b\": -1, \"c\": 2x}").unwrap_err();
        let e = parse("{\"a\": 1, \"b\": -Infinity, \"c\": 2x}").unwrap_err();
        assert_eq!(
            (e.line, e.column),
            (1, plain.column() + "Infinity".len() - 1)
        );
        let e = parse("{\n  \"a\": NaN,\n  \"b\": trux\n}").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e
            .to_string()
            .ends_with(&format!("at line 3 column {}", e.column)));
        assert!(parse("{\"a\": Infinityx}").is_err());
    }
}
