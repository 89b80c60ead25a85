//! Policy errors: every problem names the file, the line and the field.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a policy, located in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the policy came from (a path, or `<string>`).
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// Dotted path of the field, e.g. `response_types.comply.classes.ideal`.
    pub field: String,
    /// What is wrong, and often how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Io {
        /// The policy file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML itself is malformed or does not fit the schema.
    #[error("{problem}\n{snippet}")]
    Parse {
        /// Where and what.
        problem: Problem,
        /// The parser's excerpt of the source around the error.
        snippet: String,
    },
    /// The YAML fits the schema but the policy is inconsistent; all problems are listed.
    #[error("{}", join_problems(.0))]
    Invalid(Vec<Problem>),
}

impl PolicyError {
    /// The problems, whatever the kind of error (empty for I/O errors).
    pub fn problems(&self) -> Vec<&Problem> {
        match self {
            PolicyError::Io { .. } => Vec::new(),
            PolicyError::Parse { problem, .. } => vec![problem],
            PolicyError::Invalid(problems) => problems.iter().collect(),
        }
    }
}

fn join_problems(problems: &[Problem]) -> String {
    let mut out = format!("invalid policy ({} problem{}):", problems.len(), if problems.len() == 1 { "" } else { "s" });
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// Best-effort dotted path of the block-style YAML key at `line` (1-based), found by walking
/// back through less-indented keys. serde errors carry a location but no path; ops teams
/// read paths faster than line numbers.
pub(crate) fn yaml_path_at(source: &str, line: u64) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let Some(start) = (line as usize).checked_sub(1).filter(|&l| l < lines.len()) else {
        return String::new();
    };
    let mut path = Vec::new();
    let mut indent_limit = usize::MAX;
    for text in lines[..=start].iter().rev() {
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = text.len() - trimmed.len();
        if indent >= indent_limit {
            continue;
        }
        let candidate = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        if let Some((key, _)) = candidate.split_once(':') {
            let key = key.trim().trim_matches('"').trim_matches('\'');
            let plain = !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c));
            if plain {
                path.push(key.to_string());
                indent_limit = indent;
            }
        }
        if indent == 0 && indent_limit == 0 {
            break;
        }
    }
    path.reverse();
    path.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_walks_up_indentation() {
        let src = "a:\n  b:\n    c: 1\n    d: 2\n  e:\n    f: x\n";
        assert_eq!(yaml_path_at(src, 4), "a.b.d");
        assert_eq!(yaml_path_at(src, 6), "a.e.f");
        assert_eq!(yaml_path_at(src, 1), "a");
        assert_eq!(yaml_path_at(src, 99), "");
    }
}
