//! The toolkit both languages (policy documents here, scenarios in `breakwater-scenario`) read
//! user input with: a [`Path`] to each value, the known [`Fields`] of a mapping with unknown ones
//! reported, and a [`Reader`] whose primitives (integers in a range, durations, words from a list,
//! lists whose bad items are left out, ...) report every problem at its path and position and go
//! on, so that one pass shows the user everything. A language is a set of functions over a
//! `Reader` and the tree of [`crate::source`]; none reaches into another's internals.

use std::collections::{BTreeMap, HashMap};

use crate::diag::{Diagnostic, Span};
use crate::model::{Duration, METHODS, Percent, Text};
use crate::source::{Node, Value, key_text, same_key};

/// Where each decoded path was written.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex(HashMap<String, Span>);

impl SpanIndex {
    pub fn get(&self, path: &str) -> Option<Span> {
        self.0.get(path).copied()
    }
}

/// The reading primitives: each reports its own errors at the path it is given and returns None
/// for a value it could not read. A language is a set of functions over a `Reader`.
#[derive(Debug, Default)]
pub struct Reader {
    diags: Vec<Diagnostic>,
    spans: SpanIndex,
    skip_spans: bool,
}

/// Where a value sits in the document (`policies[3].retry.max_retries`), kept as links to its
/// parent on the stack and written out only for a message or the position index: building every
/// path as a `String` was a large share of decoding a large document.
#[derive(Debug, Clone, Copy)]
pub enum Path<'a> {
    /// A path already written out (the document itself is `Text("")`).
    Text(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    pub const ROOT: Path<'static> = Path::Text("");

    pub fn field<'b>(&'b self, name: &'b str) -> Path<'b> {
        Path::Field(self, name)
    }

    pub fn index(&self, i: usize) -> Path<'_> {
        Path::Index(self, i)
    }

    fn is_root(&self) -> bool {
        matches!(self, Path::Text(""))
    }
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Text(text) => f.write_str(text),
            Path::Field(parent, name) if parent.is_root() => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The fields of one mapping, with unknown ones already reported.
#[derive(Debug)]
pub struct Fields<'n, 'p> {
    pub path: Path<'p>,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n, '_> {
    pub fn get<'s>(&'s self, name: &'s str) -> Option<(&'n Node, Path<'s>)> {
        self.entries.iter().find(|(k, _)| same_key(k, name)).map(|(_, n)| (n, self.path.field(name)))
    }
}

/// `path.field`, or `field` at the root (for paths written out as text).
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

/// The closest known word, when it is close enough to be what the user meant.
pub fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (*k, strsim::jaro_winkler(word, k)))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

impl Reader {
    pub fn error(&mut self, path: &Path<'_>, node: &Node, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(path.to_string(), message).with_span(node.span));
    }

    pub fn visit(&mut self, path: &Path<'_>, node: &Node) {
        if !self.skip_spans {
            self.spans.0.insert(path.to_string(), node.span);
        }
    }

    pub fn expected(&mut self, path: &Path<'_>, node: &Node, what: &str) {
        let found = node.value.kind();
        self.error(path, node, format!("expected {what}, found {found}"));
    }

    pub fn fields<'n, 'p>(
        &mut self,
        node: &'n Node,
        path: &Path<'p>,
        known: &[&str],
    ) -> Option<Fields<'n, 'p>> {
        self.visit(path, node);
        let Value::Map(entries) = &node.value else {
            self.expected(path, node, "a mapping");
            return None;
        };
        for (key, _) in entries {
            // Keys are almost always strings: borrow them rather than copy.
            let name = match &key.value {
                Value::Str(s) => std::borrow::Cow::Borrowed(s.as_ref()),
                _ => std::borrow::Cow::Owned(key_text(key)),
            };
            if known.contains(&name.as_ref()) {
                continue;
            }
            let at = path.field(&name);
            let message = match suggest(&name, known) {
                Some(s) => format!("unknown field `{name}`; did you mean `{s}`?"),
                None => format!("unknown field `{name}`; expected one of: {}", known.join(", ")),
            };
            self.error(&at, key, message);
        }
        let fields = Fields { path: *path, entries };
        Some(fields)
    }

    pub fn seq<'n>(&mut self, node: &'n Node, path: &Path<'_>) -> Option<&'n [Node]> {
        self.visit(path, node);
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.expected(path, node, "a list");
                None
            }
        }
    }

    /// A list whose items each decode on their own; bad items are reported and left out, so the
    /// cross-field checks still see the good ones.
    pub fn list<T>(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        item: impl FnMut(&mut Self, &Node, &Path<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.list_of(node, path, item).map(|(items, _)| items)
    }

    /// As [`Self::list`], with whether every item decoded.
    pub fn list_of<T>(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        mut item: impl FnMut(&mut Self, &Node, &Path<'_>) -> Option<T>,
    ) -> Option<(Vec<T>, bool)> {
        let items = self.seq(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, n) in items.iter().enumerate() {
            let p = path.index(i);
            self.visit(&p, n);
            if let Some(v) = item(self, n, &p) {
                out.push(v);
            }
        }
        let complete = out.len() == items.len();
        Some((out, complete))
    }

    /// A list that must not be empty as written (`why` says what an empty one would mean).
    pub fn non_empty_list<T>(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        why: &str,
        item: impl FnMut(&mut Self, &Node, &Path<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        if matches!(&node.value, Value::Seq(items) if items.is_empty()) {
            self.visit(path, node);
            self.error(path, node, why.to_string());
            return None;
        }
        self.list(node, path, item)
    }

    pub fn string(&mut self, node: &Node, path: &Path<'_>) -> Option<String> {
        self.str(node, path).map(str::to_string)
    }

    /// A string field, borrowed from the tree (for values that are parsed or compared, not kept).
    pub fn str<'n>(&mut self, node: &'n Node, path: &Path<'_>) -> Option<&'n str> {
        self.visit(path, node);
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.expected(path, node, "a string");
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, path: &Path<'_>) -> Option<bool> {
        self.visit(path, node);
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.expected(path, node, "true or false");
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, path: &Path<'_>, min: u64, max: u64) -> Option<u64> {
        self.visit(path, node);
        match &node.value {
            Value::Int(i) => match u64::try_from(*i) {
                Ok(v) if (min..=max).contains(&v) => Some(v),
                _ => {
                    self.error(path, node, format!("must be between {min} and {max}, found {i}"));
                    None
                }
            },
            Value::BigInt(s) => {
                self.error(path, node, format!("must be between {min} and {max}, found {s}"));
                None
            }
            Value::Float(f) => {
                self.error(path, node, format!("expected a whole number, found {f}"));
                None
            }
            _ => {
                self.expected(path, node, "an integer");
                None
            }
        }
    }

    /// A percentage of requests: a number from 0 to 100 with at most four decimals.
    pub fn percent(&mut self, node: &Node, path: &Path<'_>) -> Option<Percent> {
        self.visit(path, node);
        let value = match &node.value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            Value::BigInt(s) => {
                self.error(path, node, format!("must be between 0 and 100, found {s}"));
                return None;
            }
            _ => {
                self.expected(path, node, "a percentage (a number from 0 to 100)");
                return None;
            }
        };
        match Percent::from_percent(value) {
            Ok(p) => Some(p),
            Err(m) => {
                self.error(path, node, m);
                None
            }
        }
    }

    pub fn int_as<T: TryFrom<u64>>(&mut self, node: &Node, path: &Path<'_>, min: u64, max: u64) -> Option<T> {
        self.int(node, path, min, max).and_then(|v| T::try_from(v).ok())
    }

    /// A string-valued field parsed by `parse`, whose error message is the user-facing one.
    pub fn parsed<T>(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.str(node, path)?;
        match parse(text) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(path, node, message);
                None
            }
        }
    }

    pub fn duration(&mut self, node: &Node, path: &Path<'_>) -> Option<Duration> {
        if let Value::Int(_) = node.value {
            self.visit(path, node);
            self.error(path, node, "a duration needs a unit: 250ms, 1s, 2m, 1h");
            return None;
        }
        self.parsed(node, path, Duration::parse)
    }

    pub fn word<T: Copy>(&mut self, node: &Node, path: &Path<'_>, words: &[(&str, T)]) -> Option<T> {
        let text = self.str(node, path)?;
        if let Some((_, v)) = words.iter().find(|(w, _)| *w == text) {
            return Some(*v);
        }
        let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
        let message = match suggest(text, &names) {
            Some(s) => format!("unknown value `{text}`; did you mean `{s}`?"),
            None => format!("unknown value `{text}`; expected one of: {}", names.join(", ")),
        };
        self.error(path, node, message);
        None
    }

    pub fn method(&mut self, node: &Node, path: &Path<'_>) -> Option<Text> {
        let text = self.str(node, path)?;
        if let Some(m) = METHODS.iter().find(|m| **m == text) {
            return Some(Text::Borrowed(m));
        }
        let upper = text.to_ascii_uppercase();
        let message = if METHODS.contains(&upper.as_str()) {
            format!("methods are upper case: write `{upper}`")
        } else {
            format!("unknown HTTP method `{text}`; expected one of: {}", METHODS.join(", "))
        };
        self.error(path, node, message);
        None
    }

    pub fn string_map(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        mut check: impl FnMut(&mut Self, &str, &str, &Node, &Path<'_>),
    ) -> BTreeMap<String, String> {
        self.visit(path, node);
        let mut out = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            self.expected(path, node, "a mapping");
            return out;
        };
        for (k, v) in entries {
            let name = key_text(k);
            let p = path.field(&name);
            self.visit(&p, v);
            let value = match &v.value {
                Value::Str(s) => s.to_string(),
                Value::Int(_) | Value::Bool(_) | Value::Float(_) | Value::BigInt(_) => key_text(v),
                _ => {
                    self.expected(&p, v, "a string");
                    continue;
                }
            };
            check(self, &name, &value, k, &p);
            out.insert(name, value);
        }
        out
    }

    /// A reader that keeps no positions (the filter reports errors by path only, and indexing
    /// every path of a large document costs more than reading it).
    pub fn without_spans() -> Self {
        Reader { skip_spans: true, ..Reader::default() }
    }

    /// Adds a diagnostic of the language's own (a warning, or an error found across fields).
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diags.push(diagnostic);
    }

    /// What was reported so far.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diags
    }

    /// Every diagnostic, and the position of every visited path.
    pub fn finish(self) -> (Vec<Diagnostic>, SpanIndex) {
        (self.diags, self.spans)
    }
}
