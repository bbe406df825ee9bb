//! A fast reader for JSON documents, which builds exactly the tree the YAML reader builds.
//!
//! Envoy hands the filter its configuration as JSON on every reconfiguration, on the main thread
//! and on every worker, and a document of 1,000 policies is most of a megabyte. The general YAML
//! scanner reads that slowly (a character at a time, with its position); this reader builds the
//! tree directly from the JSON, with the same positions, the same scalar resolution and the same
//! depth and node limits and duplicate-key errors as the YAML reader (the tests compare the two
//! trees).
//!
//! It only takes what it is sure of: anything that is not plain JSON (YAML syntax, a syntax error,
//! a surrogate escape, a control character, a lone carriage return) returns `None`, and the
//! caller reads the text with the YAML reader, which also words any error.
//!
//! Its counters cannot overflow: positions, lines and columns are bounded by the text's length (a
//! `usize`), the depth by [`MAX_DEPTH`] and the nodes by [`MAX_NODES`], and a `\u` escape is four
//! hex digits; so plain arithmetic is kept in this hot loop.
#![expect(clippy::arithmetic_side_effects, reason = "bounded by the input's length; see above")]

use std::borrow::Cow;

use super::{MAX_DEPTH, MAX_NODES, Node, Value, plain, too_deep, too_many_nodes};
use crate::diag::{Diagnostic, Span};

/// `Some` when `text` is one JSON object or array; `None` to fall back to the YAML reader.
pub(super) fn parse(text: &str) -> Option<Result<Node, Vec<Diagnostic>>> {
    read::<true>(text)
}

/// As [`parse`], without positions: every span is line 1, column 1. For readers that never show
/// a position (the filter's loader), which then skip counting lines and characters.
pub(super) fn parse_without_spans(text: &str) -> Option<Result<Node, Vec<Diagnostic>>> {
    read::<false>(text)
}

fn read<const SPANS: bool>(text: &str) -> Option<Result<Node, Vec<Diagnostic>>> {
    let first = text.bytes().find(|b| !b.is_ascii_whitespace())?;
    if first != b'{' && first != b'[' {
        return None;
    }
    let mut r = Reader::<SPANS> {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        line: 1,
        col: 0,
        depth: 0,
        nodes: 0,
        errors: Vec::new(),
        entries: Vec::new(),
        items: Vec::new(),
    };
    let root = match r.value() {
        Ok(root) => root,
        Err(Stop::Fatal(d)) => return Some(Err(vec![*d])),
        Err(Stop::NotPlainJson) => return None,
    };
    r.skip_space()?;
    if r.pos != r.bytes.len() {
        return None;
    }
    Some(if r.errors.is_empty() { Ok(root) } else { Err(r.errors) })
}

/// Builds the tree directly (recursive descent, depth bounded by [`MAX_DEPTH`]), holding the YAML
/// reader's rules: the same node budget, depth limit and duplicate-key errors, in the same order.
/// `SPANS`: whether to keep line and column (otherwise every span is 1:1).
struct Reader<'t, const SPANS: bool> {
    text: &'t str,
    bytes: &'t [u8],
    pos: usize,
    /// Where `pos` is, as the YAML scanner counts: lines from 1, columns in characters from 0.
    line: usize,
    col: usize,
    /// Containers open around `pos`.
    depth: usize,
    nodes: usize,
    /// Duplicate keys: reported, and reading goes on (as the YAML reader does).
    errors: Vec<Diagnostic>,
    /// The entries and items of the containers being read, innermost last: each container moves
    /// its own into a vector of the exact size when it closes (one allocation, no regrowth).
    entries: Vec<(Node, Node)>,
    items: Vec<Node>,
}

/// Why reading stopped: not JSON we are sure of (fall back), or a limit of the reader.
enum Stop {
    NotPlainJson,
    Fatal(Box<Diagnostic>),
}

fn not_json<T>() -> Result<T, Stop> {
    Err(Stop::NotPlainJson)
}

impl<const SPANS: bool> Reader<'_, SPANS> {
    fn span(&self) -> Span {
        if SPANS { Span::new(self.line.max(1), self.col + 1) } else { Span::new(1, 1) }
    }

    /// Moves the column over `chunk`, which holds no line break, by its characters.
    #[inline(always)]
    fn advance_col(&mut self, chunk: &str) {
        if SPANS {
            self.col += if chunk.is_ascii() { chunk.len() } else { chunk.chars().count() };
        }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Moves over one byte, keeping line and column as the YAML scanner would.
    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if !SPANS {
            return Some(b);
        }
        if b == b'\n' {
            self.line += 1;
            self.col = 0;
        } else if b & 0xC0 != 0x80 {
            // Columns count characters: UTF-8 continuation bytes do not move it.
            self.col += 1;
        }
        Some(b)
    }

    fn skip_space(&mut self) -> Option<()> {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' => {
                    self.bump();
                }
                // "\r\n" is one line break for YAML; a lone "\r" is one too, which we leave to it.
                b'\r' if self.bytes.get(self.pos + 1) == Some(&b'\n') => {
                    self.pos += 1;
                }
                b'\r' => return None,
                _ => break,
            }
        }
        Some(())
    }

    /// Skips white space; compact JSON (what Envoy hands over) has none, so that case is inlined.
    #[inline(always)]
    fn space(&mut self) -> Result<(), Stop> {
        match self.peek() {
            Some(b' ' | b'\t' | b'\n' | b'\r') => self.skip_space().ok_or(Stop::NotPlainJson),
            _ => Ok(()),
        }
    }

    /// One more node against the document's budget.
    fn count(&mut self, span: Span) -> Result<(), Stop> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Stop::Fatal(too_many_nodes(span)));
        }
        Ok(())
    }

    fn value(&mut self) -> Result<Node, Stop> {
        self.space()?;
        let span = self.span();
        match self.peek() {
            Some(b'{') => self.object(span),
            Some(b'[') => self.array(span),
            Some(b'"') => {
                let text = self.string(false)?;
                self.count(span)?;
                Ok(Node { value: Value::Str(text), span })
            }
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                let text = self.word()?;
                let value = plain(text).unwrap_or_else(|| Value::Str(Cow::Owned(text.to_string())));
                self.count(span)?;
                Ok(Node { value, span })
            }
            _ => not_json(),
        }
    }

    /// Opens a container: counted, and refused past [`MAX_DEPTH`].
    fn open(&mut self, span: Span) -> Result<(), Stop> {
        self.count(span)?;
        if self.depth >= MAX_DEPTH {
            return Err(Stop::Fatal(too_deep(span)));
        }
        self.depth += 1;
        self.bump();
        Ok(())
    }

    fn object(&mut self, span: Span) -> Result<Node, Stop> {
        self.open(span)?;
        let start = self.entries.len();
        let mut seen = super::SeenKeys::default();
        self.space()?;
        if self.peek() == Some(b'}') {
            self.bump();
        } else {
            loop {
                self.space()?;
                let key_span = self.span();
                if self.peek() != Some(b'"') {
                    return not_json();
                }
                let key = self.string(true)?;
                self.count(key_span)?;
                let mine = self.entries.get(start..).unwrap_or_default();
                if seen.is_repeated(mine, key.as_ref()) {
                    self.errors
                        .push(Diagnostic::error("", format!("duplicate key `{key}`")).with_span(key_span));
                }
                self.space()?;
                if self.bump() != Some(b':') {
                    return not_json();
                }
                let value = self.value()?;
                self.entries.push((Node { value: Value::Str(key), span: key_span }, value));
                self.space()?;
                match self.bump() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => return not_json(),
                }
            }
        }
        self.depth -= 1;
        let entries: Vec<(Node, Node)> = self.entries.drain(start..).collect();
        // As the YAML reader: a mapping is where its first key is.
        let span = entries.first().map_or(span, |(k, _)| k.span);
        Ok(Node { value: Value::Map(entries), span })
    }

    fn array(&mut self, span: Span) -> Result<Node, Stop> {
        self.open(span)?;
        let start = self.items.len();
        self.space()?;
        if self.peek() == Some(b']') {
            self.bump();
        } else {
            loop {
                let item = self.value()?;
                self.items.push(item);
                self.space()?;
                match self.bump() {
                    Some(b',') => continue,
                    Some(b']') => break,
                    _ => return not_json(),
                }
            }
        }
        self.depth -= 1;
        Ok(Node { value: Value::Seq(self.items.drain(start..).collect()), span })
    }

    /// A number, `true`, `false` or `null`: resolved exactly as the YAML reader's plain scalars.
    fn word(&mut self) -> Result<&str, Stop> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                self.bump();
            } else {
                break;
            }
        }
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b']' | b'}') => {}
            _ => return not_json(),
        }
        // ASCII bytes only, so these are character boundaries.
        self.text.get(start..self.pos).ok_or(Stop::NotPlainJson)
    }

    /// A double-quoted string with JSON escapes, which YAML's double-quoted style reads the same.
    /// A `key` that is a field name of the policy language is borrowed, not copied.
    fn string(&mut self, key: bool) -> Result<Cow<'static, str>, Stop> {
        self.bump();
        let mut out = String::new();
        loop {
            // Take the run up to the next quote, backslash or control character at once. Those
            // are ASCII, so the run ends on a character boundary of the (valid UTF-8) text.
            let rest = self.bytes.get(self.pos..).ok_or(Stop::NotPlainJson)?;
            let run =
                rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).ok_or(Stop::NotPlainJson)?;
            let chunk = self.text.get(self.pos..self.pos + run).ok_or(Stop::NotPlainJson)?;
            if out.is_empty() && rest.get(run) == Some(&b'"') {
                // No escape (nearly every string): a known name, or one allocation of the exact size.
                if let Some(name) = key.then(|| crate::fields::field_name(chunk)).flatten() {
                    self.advance_col(chunk);
                    self.pos += run;
                    self.bump();
                    return Ok(Cow::Borrowed(name));
                }
                out.reserve_exact(run);
            }
            out.push_str(chunk);
            // The run holds no line break: only the column moves.
            self.advance_col(chunk);
            self.pos += run;
            match self.bump() {
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.bump() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode()?,
                        _ => return not_json(),
                    };
                    out.push(c);
                }
                _ => return not_json(), // a raw control character: JSON forbids it
            }
        }
        Ok(Cow::Owned(out))
    }

    /// `\uXXXX` outside the surrogate range (pairs are left to the YAML reader).
    fn unicode(&mut self) -> Result<char, Stop> {
        let mut code = 0u32;
        for _ in 0..4 {
            let digit = self.bump().and_then(|b| char::from(b).to_digit(16)).ok_or(Stop::NotPlainJson)?;
            code = code * 16 + digit;
        }
        char::from_u32(code).ok_or(Stop::NotPlainJson)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, Flow};
    use super::*;
    use proptest::prelude::*;

    /// The YAML reader on the same text, with the fast path out of the way.
    fn by_yaml(text: &str) -> Result<Node, Vec<Diagnostic>> {
        by_yaml_scanner(text).unwrap()
    }

    /// None when the YAML scanner refuses the text (it reads a few JSON spellings, such as `"a":1`
    /// inside a list, as errors, which the JSON reader accepts).
    fn by_yaml_scanner(text: &str) -> Option<Result<Node, Vec<Diagnostic>>> {
        let mut builder = Builder::default();
        let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
        loop {
            let (event, mark) = parser.next_token().ok()?;
            match builder.event(event, super::super::span_of(&mark)) {
                Ok(Flow::Done) => break,
                Ok(Flow::Continue) => {}
                Err(d) => return Some(Err(vec![*d])),
            }
        }
        Some(builder.finish())
    }

    fn same(text: &str) {
        let fast = parse(text).unwrap_or_else(|| panic!("not taken by the JSON reader: {text}"));
        assert_eq!(fast, by_yaml(text), "{text}");
    }

    #[test]
    fn builds_the_same_tree_as_the_yaml_reader() {
        same(
            r#"{"version":1,"policies":[{"name":"a","match":{"path_prefix":"/x"},"rate_limit":{"rate":5,"per":"1s"}}]}"#,
        );
        same("{\n  \"a\": [1, -2, 3.5, 1e3, true, false, null, \"\"],\n  \"b\": {},\n  \"c\": []\n}\n");
        same("\r\n{ \"tab\":\t\"x\\ty\", \"esc\": \"\\\"\\\\\\/\\b\\f\\n\\r\\u00e9\\u4e2d\" }\r\n");
        same("{\"caf\u{e9}\": \"\u{4e2d}\u{6587}\", \"after\": 12345678901234567890}");
        same("[{\"a\": 1}, [2, [3]], \"é\"]");
    }

    #[test]
    fn duplicate_keys_and_limits_hold_on_the_fast_path() {
        same("{\"a\": 1, \"a\": 2}");
        let deep = "[".repeat(100) + &"]".repeat(100);
        let errors = parse(&deep).unwrap().unwrap_err();
        assert!(errors[0].message.contains("nests deeper"), "{errors:?}");
    }

    #[test]
    fn anything_else_is_left_to_the_yaml_reader() {
        for text in [
            "version: 1",
            "{a: 1}",
            "{\"a\": 1,}",
            "{\"a\": 1} trailing",
            "{\"a\": \"\\ud83d\\ude00\"}",
            "{\"a\": \"raw\ttab\"}",
            "{\"a\":\r1}",
            "{\"a\": [1 2]}",
            "{\"a\": yes please}",
            "{\"a\": 1",
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }

    /// Any JSON value as text, with random spacing: strings with escapes and non-ASCII, numbers of
    /// every shape, repeated keys, nesting.
    fn json() -> impl Strategy<Value = String> {
        let space = prop_oneof![Just(""), Just(" "), Just("\n  "), Just("\r\n"), Just("\t")];
        let string = prop_oneof![
            "[a-z_]{0,6}",
            Just("caf\u{e9} \u{4e2d}".to_string()),
            Just("a\\\"b\\n\\u00e9\\/".to_string()),
        ]
        .prop_map(|s| format!("\"{s}\""));
        let word = prop_oneof![
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            Just("12345678901234567890".to_string()),
            Just("-0.5e3".to_string()),
            Just("1.25".to_string()),
        ];
        let leaf = prop_oneof![string.clone(), word];
        leaf.prop_recursive(4, 40, 5, move |inner| {
            let s = space.clone();
            prop_oneof![
                (prop::collection::vec((inner.clone(), s.clone()), 0..5)).prop_map(|items| {
                    let body: Vec<String> = items.into_iter().map(|(v, sp)| format!("{sp}{v}{sp}")).collect();
                    format!("[{}]", body.join(","))
                }),
                (prop::collection::vec((prop_oneof!["[a-c]", Just("\u{e9}".to_string())], inner, s), 0..5))
                    .prop_map(|entries| {
                        let body: Vec<String> = entries
                            .into_iter()
                            .map(|(k, v, sp)| format!("{sp}\"{k}\"{sp}:{sp}{v}{sp}"))
                            .collect();
                        format!("{{{}}}", body.join(","))
                    }),
            ]
        })
        .prop_filter("a document is an object or a list", |t| t.starts_with('{') || t.starts_with('['))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The JSON reader and the YAML reader agree on every JSON document: the same tree, or
        /// the same errors (duplicate keys), at the same positions.
        #[test]
        fn agrees_with_the_yaml_reader(text in json()) {
            let fast = parse(&text);
            prop_assert!(fast.is_some(), "not taken by the JSON reader: {}", text);
            let yaml = by_yaml_scanner(&text);
            prop_assume!(yaml.is_some(), "the YAML scanner refuses {}", text);
            prop_assert_eq!(fast, yaml, "{}", text);
        }

        #[test]
        fn without_spans_builds_the_same_tree_and_errors(text in json()) {
            let mut with = parse(&text);
            if let Some(result) = &mut with {
                match result {
                    Ok(root) => unspan(root),
                    Err(errors) => errors.iter_mut().for_each(|e| e.span = e.span.map(|_| Span::new(1, 1))),
                }
            }
            prop_assert_eq!(parse_without_spans(&text), with, "{}", text);
        }
    }

    /// Every span of the tree set to 1:1.
    fn unspan(node: &mut Node) {
        node.span = Span::new(1, 1);
        match &mut node.value {
            Value::Seq(items) => items.iter_mut().for_each(unspan),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                unspan(k);
                unspan(v);
            }),
            _ => {}
        }
    }
}
