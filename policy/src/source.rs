//! Reading a policy document into a tree that remembers where every value came from.
//!
//! serde stops at the first error and forgets positions, but users fix documents faster when they
//! see *every* problem with its line and column. So a document is first read into a [`Node`] tree
//! (YAML 1.2, which also reads JSON), and [`crate::decode`] then walks that tree, collecting all
//! problems at once.
//!
//! Hostile input is expected here (documents come from users, from the admin API and from Envoy's
//! plugin configuration): nesting depth, node count and number sizes are bounded, aliases are
//! expanded under the same node budget (no "billion laughs"), and nothing in this module panics.

use std::borrow::Cow;
use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, Span};

mod json;

/// Deepest nesting accepted. Policy documents need about 6 levels.
pub const MAX_DEPTH: usize = 64;
/// Most nodes (scalars, sequences, mappings, aliases expanded) accepted in one document.
pub const MAX_NODES: usize = 2_000_000;

/// A value read from a document, with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// The kinds of value a YAML or JSON document holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64; kept as written so errors can show it.
    BigInt(String),
    Float(f64),
    /// Text; borrowed for the field names of the policy language that the JSON reader recognises
    /// (keys are most of a configuration's strings, and each copy is an allocation).
    Str(Cow<'static, str>),
    Seq(Vec<Node>),
    /// Keys in document order. Duplicate keys are reported while reading.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// The user's word for this kind of value, for messages like "expected a number, found a list".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::BigInt(_) => "an integer",
            Value::Float(_) => "a decimal number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Reads UTF-8 bytes: a non-UTF-8 document is an error that points at the first bad byte.
pub fn parse_bytes(bytes: &[u8]) -> Result<Node, Vec<Diagnostic>> {
    parse_bytes_with(bytes, parse)
}

/// As [`parse_bytes`], where no position will be shown: JSON is read without counting lines and
/// columns (its spans are all 1:1); other text goes to the YAML reader as usual.
pub fn parse_bytes_without_spans(bytes: &[u8]) -> Result<Node, Vec<Diagnostic>> {
    parse_bytes_with(bytes, |text| json::parse_without_spans(text).unwrap_or_else(|| parse_yaml(text)))
}

fn parse_bytes_with(
    bytes: &[u8],
    parse: impl FnOnce(&str) -> Result<Node, Vec<Diagnostic>>,
) -> Result<Node, Vec<Diagnostic>> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
            // The prefix is valid UTF-8 by construction.
            let prefix = String::from_utf8_lossy(good);
            let span = Span::at_end_of(&prefix);
            Err(vec![
                Diagnostic::error(
                    "",
                    format!("the document is not valid UTF-8 (bad byte at offset {})", e.valid_up_to()),
                )
                .with_span(span),
            ])
        }
    }
}

/// Reads one YAML (or JSON) document.
///
/// JSON (what Envoy hands the filter on every reconfiguration, and what `breakwater compile`
/// prints) takes a fast path that builds the same tree as the YAML reader: see [`json`].
pub fn parse(text: &str) -> Result<Node, Vec<Diagnostic>> {
    json::parse(text).unwrap_or_else(|| parse_yaml(text))
}

/// The general reader, for what the JSON fast path leaves (and for the error messages of all).
fn parse_yaml(text: &str) -> Result<Node, Vec<Diagnostic>> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(x) => x,
            Err(e) => return Err(vec![syntax_error(text, &builder, &e)]),
        };
        match builder.event(event, span_of(&mark)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Done) => break,
            Err(d) => return Err(vec![*d]),
        }
    }
    builder.finish()
}

/// A scanner error. When the parser gave up inside a flow collection (`[`…`]`, `{`…`}`), the
/// mistake is almost always that collection's missing closer, which the parser can only notice
/// lines later (often at the end of the file): point at the opener, as rustc does for an unclosed
/// delimiter, and say where the parser stopped. Quotes need nothing: the scanner already reports an
/// unclosed quote where it was opened.
fn syntax_error(text: &str, builder: &Builder, e: &yaml_rust2::ScanError) -> Diagnostic {
    let stopped = span_of(e.marker());
    let opener = builder.stack.last().map(|open| match open {
        Open::Seq { span, .. } | Open::Map { span, .. } => *span,
    });
    let flow = opener.and_then(|span| Some((span, char_at(text, span)?)));
    match flow {
        // "invalid indentation in flow construct" is not about a missing closer.
        Some((span, open @ ('[' | '{')))
            if e.info().contains("flow") && !e.info().contains("indentation") =>
        {
            let close = if open == '[' { ']' } else { '}' };
            Diagnostic::error(
                "",
                format!(
                    "YAML syntax error: this `{open}` is never closed (at {}:{} the parser expected `,` or `{close}`)",
                    stopped.line, stopped.col
                ),
            )
            .with_span(span)
        }
        _ => Diagnostic::error("", format!("YAML syntax error: {}", e.info())).with_span(stopped),
    }
}

/// The character at a 1-based line and column (columns count characters, as the scanner does).
fn char_at(text: &str, span: Span) -> Option<char> {
    let line = text.split('\n').nth(span.line.checked_sub(1)?)?;
    line.chars().nth(span.col.checked_sub(1)?)
}

impl Builder {
    fn finish(self) -> Result<Node, Vec<Diagnostic>> {
        let mut errors = self.errors;
        match self.root {
            Some(root) if errors.is_empty() => Ok(root),
            Some(_) => Err(errors),
            None => {
                errors.push(Diagnostic::error("", "the document is empty").with_span(Span::new(1, 1)));
                Err(errors)
            }
        }
    }
}

fn span_of(m: &Marker) -> Span {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Span::new(m.line().max(1), m.col().saturating_add(1))
}

enum Flow {
    Continue,
    Done,
}

enum Open {
    Seq { span: Span, anchor: usize, items: Vec<Node> },
    Map { span: Span, anchor: usize, entries: Vec<(Node, Node)>, pending_key: Option<Node>, seen: SeenKeys },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    errors: Vec<Diagnostic>,
}

type Fatal = Box<Diagnostic>;

impl Builder {
    fn event(&mut self, event: Event, span: Span) -> Result<Flow, Fatal> {
        match event {
            Event::StreamEnd => return Ok(Flow::Done),
            Event::DocumentStart => {
                self.documents = self.documents.saturating_add(1);
                if self.documents > 1 {
                    return Err(Box::new(
                        Diagnostic::error("", "a policy file holds one document; found a second one (`---`)")
                            .with_span(span),
                    ));
                }
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    Some(n) => n.clone(),
                    None => {
                        return Err(Box::new(
                            Diagnostic::error("", "alias to an unknown anchor").with_span(span),
                        ));
                    }
                };
                self.count(count_nodes(&node), span)?;
                self.push_value(Node { value: node.value, span })?;
            }
            Event::Scalar(text, style, anchor, _tag) => {
                self.count(1, span)?;
                let value = scalar(text, style);
                let node = Node { value, span };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_value(node)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(span)?;
                self.stack.push(Open::Seq { span, anchor, items: Vec::new() });
            }
            Event::MappingStart(anchor, _) => {
                self.open(span)?;
                self.stack.push(Open::Map {
                    span,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                    seen: SeenKeys::default(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq { span, anchor, items }) => {
                        let node = Node { value: Value::Seq(items), span };
                        if anchor > 0 {
                            self.anchors.insert(anchor, node.clone());
                        }
                        node
                    }
                    Some(Open::Map { span, anchor, entries, .. }) => {
                        // A block mapping is marked where its first `:` stands; point at its first key
                        // instead, which is where people look for "missing field" errors.
                        let span = entries.first().map_or(span, |(k, _)| k.span);
                        let node = Node { value: Value::Map(entries), span };
                        if anchor > 0 {
                            self.anchors.insert(anchor, node.clone());
                        }
                        node
                    }
                    None => {
                        return Err(Box::new(
                            Diagnostic::error("", "unbalanced YAML structure").with_span(span),
                        ));
                    }
                };
                self.push_value(node)?;
            }
        }
        Ok(Flow::Continue)
    }

    fn open(&mut self, span: Span) -> Result<(), Fatal> {
        self.count(1, span)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(too_deep(span));
        }
        Ok(())
    }

    fn count(&mut self, n: usize, span: Span) -> Result<(), Fatal> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(too_many_nodes(span));
        }
        Ok(())
    }

    fn push_value(&mut self, node: Node) -> Result<(), Fatal> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, pending_key, seen, .. }) => match pending_key.take() {
                None => {
                    if !matches!(node.value, Value::Str(_) | Value::Int(_) | Value::Bool(_) | Value::Null) {
                        return Err(Box::new(
                            Diagnostic::error("", "mapping keys must be plain words").with_span(node.span),
                        ));
                    }
                    let owned;
                    let key = match &node.value {
                        Value::Str(s) => s.as_ref(),
                        _ => {
                            owned = key_text(&node);
                            owned.as_str()
                        }
                    };
                    if seen.is_repeated(entries, key) {
                        self.errors.push(
                            Diagnostic::error("", format!("duplicate key `{key}`")).with_span(node.span),
                        );
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

/// The limits' errors, shared by the YAML reader and the JSON reader so that both word them alike.
fn too_deep(span: Span) -> Fatal {
    Box::new(
        Diagnostic::error("", format!("the document nests deeper than {MAX_DEPTH} levels")).with_span(span),
    )
}

fn too_many_nodes(span: Span) -> Fatal {
    Box::new(
        Diagnostic::error("", format!("the document has more than {MAX_NODES} values (aliases included)"))
            .with_span(span),
    )
}

/// The keys of one mapping seen so far, for duplicate detection in linear time: a mapping of
/// 200,000 keys (a 2 MiB request body) must not cost 200,000² comparisons. Small mappings (every
/// real policy document) are scanned; past [`SeenKeys::SCAN`] keys the set is built once and kept.
/// The set hashes with the standard library's keyed SipHash: the keys come from users.
#[derive(Debug, Default)]
pub(crate) struct SeenKeys {
    set: Option<std::collections::HashSet<String>>,
}

impl SeenKeys {
    const SCAN: usize = 16;

    /// Whether `key` is one of `earlier`'s keys; `key` counts as seen afterwards (the caller pushes
    /// it onto `earlier`).
    pub(crate) fn is_repeated(&mut self, earlier: &[(Node, Node)], key: &str) -> bool {
        if self.set.is_none() && earlier.len() < Self::SCAN {
            return earlier.iter().any(|(k, _)| same_key(k, key));
        }
        let set = self.set.get_or_insert_with(|| earlier.iter().map(|(k, _)| key_text(k)).collect());
        !set.insert(key.to_owned())
    }
}

/// The text of a mapping key (`404:` is a key too).
pub fn key_text(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        Value::Float(f) => f.to_string(),
        Value::Seq(_) | Value::Map(_) => String::new(),
    }
}

/// `key_text(node) == key`, without building the text for string keys.
pub(crate) fn same_key(node: &Node, key: &str) -> bool {
    match &node.value {
        Value::Str(s) => s == key,
        _ => key_text(node) == key,
    }
}

fn count_nodes(node: &Node) -> usize {
    // Iterative, so a wide alias cannot overflow the stack either.
    let mut total = 0usize;
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        total = total.saturating_add(1);
        match &n.value {
            Value::Seq(items) => todo.extend(items.iter()),
            Value::Map(entries) => {
                for (k, v) in entries {
                    todo.push(k);
                    todo.push(v);
                }
            }
            _ => {}
        }
    }
    total
}

/// YAML 1.2 core schema resolution of a scalar; quoted scalars are always strings.
fn scalar(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::Str(Cow::Owned(text));
    }
    plain(&text).unwrap_or(Value::Str(Cow::Owned(text)))
}

/// What a plain scalar is when it is not text: null, a boolean or a number (YAML 1.2 core schema).
/// Takes the text by reference, so a number costs no allocation.
fn plain(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    if is_integer(text) {
        return Some(match text.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(text.to_string()),
        });
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Some(Value::Float(f));
    }
    None
}

fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_float(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if matches!(body, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
        return false; // not useful in policies; kept as text so the error names it
    }
    let mut seen_digit = false;
    let mut seen_dot = false;
    let mut seen_exp = false;
    let mut prev = ' ';
    for c in body.chars() {
        match c {
            '0'..='9' => seen_digit = true,
            '.' if !seen_dot && !seen_exp => seen_dot = true,
            'e' | 'E' if seen_digit && !seen_exp => seen_exp = true,
            '+' | '-' if prev == 'e' || prev == 'E' => {}
            _ => return false,
        }
        prev = c;
    }
    seen_digit && (seen_dot || seen_exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        match parse(text) {
            Ok(n) => n,
            Err(e) => unreachable!("parse failed: {e:?}"),
        }
    }

    #[test]
    fn scalars_resolve_like_yaml_1_2() {
        let n = root("a: 1\nb: 1.5\nc: '1'\nd: true\ne: ~\nf: 1s\ng: 99999999999999999999\n");
        let Value::Map(entries) = n.value else { unreachable!() };
        let values: Vec<_> = entries.into_iter().map(|(_, v)| v.value).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(1),
                Value::Float(1.5),
                Value::Str("1".into()),
                Value::Bool(true),
                Value::Null,
                Value::Str("1s".into()),
                Value::BigInt("99999999999999999999".into()),
            ]
        );
    }

    #[test]
    fn positions_are_one_based_line_and_column() {
        let n = root("version: 1\npolicies:\n  - name: x\n");
        let Value::Map(entries) = n.value else { unreachable!() };
        let (k, v) = &entries[1];
        assert_eq!((k.span.line, k.span.col), (2, 1));
        let Value::Seq(items) = &v.value else { unreachable!() };
        let Value::Map(inner) = &items[0].value else { unreachable!() };
        assert_eq!((inner[0].1.span.line, inner[0].1.span.col), (3, 11));
    }

    #[test]
    fn json_is_read_too() {
        let n = root(r#"{"version": 1, "policies": [{"name": "a"}]}"#);
        assert!(matches!(n.value, Value::Map(ref e) if e.len() == 2));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let errs = parse("a: 1\na: 2\n").err().unwrap_or_default();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("duplicate key `a`"));
        assert_eq!(errs[0].span.map(|s| s.line), Some(2));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let text = "[".repeat(100_000);
        let errs = parse(&text).err().unwrap_or_default();
        let m = &errs[0].message;
        assert!(m.contains("nests deeper") || m.contains("recursion limit"), "{errs:?}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='k' {
            doc.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        let errs = parse(&doc).err().unwrap_or_default();
        assert!(errs[0].message.contains("more than"), "{errs:?}");
    }

    #[test]
    fn non_utf8_points_at_the_bad_byte() {
        let errs = parse_bytes(b"version: 1\nname: \xff\n").err().unwrap_or_default();
        assert!(errs[0].message.contains("offset 17"), "{errs:?}");
        assert_eq!(errs[0].span.map(|s| (s.line, s.col)), Some((2, 7)));
    }

    /// Issue 20, defect 11: an unclosed `[` or `{` is reported where it was opened (as rustc
    /// reports an unclosed delimiter), not where the parser gave up; quotes already were.
    #[test]
    fn unclosed_flow_collections_point_at_their_opener() {
        let at = |text: &str| {
            let errs = parse(text).err().unwrap_or_default();
            (errs[0].span.map(|s| (s.line, s.col)), errs[0].message.clone())
        };
        let (span, message) = at("version: 1\npolicies:\n  - name: a\n    match: { methods: [GET, POST\n");
        assert_eq!(span, Some((4, 23)), "{message}");
        assert!(message.contains("this `[` is never closed") && message.contains("5:1"), "{message}");
        let (span, message) =
            at("version: 1\npolicies:\n  - match: { path_prefix: /a\n    rate_limit:\n      rate: 5\n");
        assert_eq!(span, Some((3, 12)), "{message}");
        assert!(message.contains("this `{` is never closed"), "{message}");
        // A `]` that closes a `{`: the opener is named too.
        let (span, message) = at("policies: [a, {b: 1]\n");
        assert_eq!(span, Some((1, 15)), "{message}");
        assert!(message.contains("this `{` is never closed"), "{message}");
        // Quotes: the scanner points at the opening quote.
        let (span, message) = at("version: 1\npolicies: 'abc\n");
        assert_eq!(span, Some((2, 11)), "{message}");
    }

    #[test]
    fn second_document_is_refused() {
        let errs = parse("a: 1\n---\nb: 2\n").err().unwrap_or_default();
        assert!(errs[0].message.contains("one document"), "{errs:?}");
    }
}
