//! [`ConfigError`] (one problem, with the key path it is about) and the helpers that find
//! that key path: for an unknown key (`serde_ignored`) or a TOML syntax error (a byte offset).

use std::fmt;

/// One problem in a config file, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// `table.key` for an ignored key (serde_ignored shows `Option` levels as `?`).
pub(super) fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            s if s.is_empty() => key.to_string(),
            s => format!("{s}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Best-effort `table.key` for a byte offset into TOML text, for syntax errors.
pub(super) fn key_path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    for (start, line) in line_starts(text) {
        if start > offset {
            break;
        }
        let l = line.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if let Some((k, _)) = l.split_once('=') {
            key = k.trim().to_string();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(file)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn line_starts(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut pos = 0;
    text.split_inclusive('\n').map(move |l| {
        let start = pos;
        pos += l.len();
        (start, l)
    })
}
