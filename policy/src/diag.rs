//! Problems found in a policy document, each with the path of the offending item, a message in the
//! user's words and, when the document was text, the line and column.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A 1-based line and column in the source document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

impl Span {
    pub fn new(line: usize, col: usize) -> Self {
        Span { line, col }
    }

    /// The position just after `text` (used to point at the first non-UTF-8 byte).
    pub fn at_end_of(text: &str) -> Self {
        let line = text.matches('\n').count().saturating_add(1);
        let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()).saturating_add(1);
        Span { line, col }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where in the document: `policies[1].retry.per_try_timeout`; empty for the whole document.
    pub path: String,
    pub message: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, path: path.into(), message: message.into(), span: None }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(path, message) }
    }

    pub fn with_span(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the problem the way compilers do: a headline, the source line and a caret.
    ///
    /// ```text
    /// error: policies[0].retry.per_try_timeout: must be shorter than timeout (3s)
    ///   --> checkout.yaml:14:24
    ///    |
    /// 14 |       per_try_timeout: 5s
    ///    |                        ^
    /// ```
    pub fn render(&self, file: &str, source: Option<&str>) -> String {
        let mut out = format!("{self}\n");
        let Some(span) = self.span else {
            out.push_str(&format!("  --> {file}\n"));
            return out;
        };
        out.push_str(&format!("  --> {file}:{}:{}\n", span.line, span.col));
        let line_text = source.and_then(|s| s.lines().nth(span.line.saturating_sub(1)));
        if let Some(text) = line_text {
            let number = span.line.to_string();
            let pad = " ".repeat(number.len());
            // Tabs would misplace the caret; show them as one space, as the column counts them.
            let shown: String = text.chars().map(|c| if c == '\t' { ' ' } else { c }).collect();
            let caret_pad = " ".repeat(span.col.saturating_sub(1));
            out.push_str(&format!("{pad} |\n{number} | {shown}\n{pad} | {caret_pad}^\n"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.path, self.message)
        }
    }
}

/// Renders every diagnostic of a file, errors and warnings in document order.
pub fn render_all(diagnostics: &[Diagnostic], file: &str, source: Option<&str>) -> String {
    diagnostics.iter().map(|d| d.render(file, source)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_a_caret_at_the_column() {
        let d = Diagnostic::error("policies[0].name", "must not be empty").with_span(Span::new(2, 11));
        let out = d.render("a.yaml", Some("version: 1\n  - name: ''\n"));
        assert_eq!(
            out,
            "error: policies[0].name: must not be empty\n  --> a.yaml:2:11\n  |\n2 |   - name: ''\n  |           ^\n"
        );
    }

    #[test]
    fn at_end_of_counts_lines_and_chars() {
        assert_eq!(Span::at_end_of("ab\ncdé"), Span::new(2, 4));
        assert_eq!(Span::at_end_of(""), Span::new(1, 1));
    }
}
