//! Reading the config file: the default path when none is given, and parse errors that say where
//! (line, column, key) without quoting the line, which may hold a password.

use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::file::{DEFAULT_CONFIG_PATH, FileConfig};

/// ` at line L, column C (table.key)` for a byte offset into a config file's text: the key is
/// what stands before `=` on that line, under the last table header above it.
fn place(text: &str, offset: usize) -> String {
    let offset = (0..=offset.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (line, column) = (before.matches('\n').count() + 1, offset - line_start + 1);
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    match (table, key) {
        (Some(t), Some(k)) => format!(" at line {line}, column {column} ({t}.{k})"),
        (None, Some(k)) => format!(" at line {line}, column {column} ({k})"),
        _ => format!(" at line {line}, column {column}"),
    }
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        // The parser's own text quotes the offending line, which may hold a password (a Redis
        // or proxy URL): say where it is and which key, never the value.
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "TOML error{}: {}",
                e.span().map_or(String::new(), |s| place(text, s.start)),
                e.message().trim_end()
            ),
        })
    }

    /// `Some(path)`: that file must exist. `None`: `config/gateway.toml` when present, else defaults.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match crate::files::read_text(&path, crate::files::CONFIG_FILE_MAX) {
            Ok(text) => FileConfig::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_does_not_parse_is_named_by_line_never_quoted() {
        let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[redis]\nurl = \"redis://:hunter2-pw@r:6379\" x\n";
        let e = FileConfig::parse(text, Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains("hunter2"), "the password is quoted: {e}");
        let e = FileConfig::parse("[server]\nlisten_typo = 1\n", Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_typo") && e.contains("line 2"), "{e}");
    }
}
