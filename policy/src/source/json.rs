//! A fast reader for JSON documents, which builds exactly the tree the YAML reader builds.
//!
//! Envoy hands the filter its configuration as JSON on every reconfiguration, on the main thread
//! and on every worker, and a document of 1,000 policies is most of a megabyte. The general YAML
//! scanner reads that at about 15 MB/s; this reader tokenizes JSON directly and feeds the same
//! events (same positions, same scalar resolution) to the same [`Builder`], so the depth and node
//! limits and the duplicate-key errors hold unchanged.
//!
//! It only takes what it is sure of: anything that is not plain JSON (YAML syntax, a syntax error,
//! a surrogate escape, a control character, a lone carriage return) returns `None`, and the
//! caller reads the text with the YAML reader, which also words any error.

use yaml_rust2::parser::Event;
use yaml_rust2::scanner::TScalarStyle;

use super::{Builder, Flow, Node};
use crate::diag::{Diagnostic, Span};

/// `Some` when `text` is one JSON object or array; `None` to fall back to the YAML reader.
pub(super) fn parse(text: &str) -> Option<Result<Node, Vec<Diagnostic>>> {
    let first = text.bytes().find(|b| !b.is_ascii_whitespace())?;
    if first != b'{' && first != b'[' {
        return None;
    }
    let mut r = Reader { bytes: text.as_bytes(), pos: 0, line: 1, col: 0, builder: Builder::default() };
    r.emit(Event::StreamStart)?;
    r.emit(Event::DocumentStart)?;
    match r.value() {
        Ok(()) => {}
        Err(Stop::Fatal(d)) => return Some(Err(vec![*d])),
        Err(Stop::NotPlainJson) => return None,
    }
    r.skip_space()?;
    if r.pos != r.bytes.len() {
        return None;
    }
    r.emit(Event::DocumentEnd)?;
    r.emit(Event::StreamEnd)?;
    Some(r.builder.finish())
}

struct Reader<'t> {
    bytes: &'t [u8],
    pos: usize,
    /// Where `pos` is, as the YAML scanner counts: lines from 1, columns in characters from 0.
    line: usize,
    col: usize,
    builder: Builder,
}

/// Why reading stopped: not JSON we are sure of (fall back), or the builder's own verdict.
enum Stop {
    NotPlainJson,
    Fatal(Box<Diagnostic>),
}

type Step = Result<(), Stop>;

fn not_json<T>() -> Result<T, Stop> {
    Err(Stop::NotPlainJson)
}

impl Reader<'_> {
    fn span(&self) -> Span {
        Span::new(self.line.max(1), self.col + 1)
    }

    /// An event that cannot fail in the builder (stream and document markers).
    fn emit(&mut self, event: Event) -> Option<()> {
        let span = self.span();
        self.builder.event(event, span).ok().map(|_| ())
    }

    fn event(&mut self, event: Event, span: Span) -> Step {
        match self.builder.event(event, span) {
            Ok(Flow::Continue | Flow::Done) => Ok(()),
            Err(d) => Err(Stop::Fatal(d)),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Moves over one byte, keeping line and column as the YAML scanner would.
    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
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

    fn value(&mut self) -> Step {
        self.skip_space().ok_or(Stop::NotPlainJson)?;
        let span = self.span();
        match self.peek() {
            Some(b'{') => self.object(span),
            Some(b'[') => self.array(span),
            Some(b'"') => {
                let text = self.string()?;
                self.event(Event::Scalar(text, TScalarStyle::DoubleQuoted, 0, None), span)
            }
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                let text = self.word()?;
                self.event(Event::Scalar(text, TScalarStyle::Plain, 0, None), span)
            }
            _ => not_json(),
        }
    }

    fn object(&mut self, span: Span) -> Step {
        self.bump();
        self.event(Event::MappingStart(0, None), span)?;
        self.skip_space().ok_or(Stop::NotPlainJson)?;
        if self.peek() == Some(b'}') {
            self.bump();
            return self.event(Event::MappingEnd, self.span());
        }
        loop {
            self.skip_space().ok_or(Stop::NotPlainJson)?;
            let key_span = self.span();
            if self.peek() != Some(b'"') {
                return not_json();
            }
            let key = self.string()?;
            self.event(Event::Scalar(key, TScalarStyle::DoubleQuoted, 0, None), key_span)?;
            self.skip_space().ok_or(Stop::NotPlainJson)?;
            if self.bump() != Some(b':') {
                return not_json();
            }
            self.value()?;
            self.skip_space().ok_or(Stop::NotPlainJson)?;
            match self.bump() {
                Some(b',') => continue,
                Some(b'}') => return self.event(Event::MappingEnd, self.span()),
                _ => return not_json(),
            }
        }
    }

    fn array(&mut self, span: Span) -> Step {
        self.bump();
        self.event(Event::SequenceStart(0, None), span)?;
        self.skip_space().ok_or(Stop::NotPlainJson)?;
        if self.peek() == Some(b']') {
            self.bump();
            return self.event(Event::SequenceEnd, self.span());
        }
        loop {
            self.value()?;
            self.skip_space().ok_or(Stop::NotPlainJson)?;
            match self.bump() {
                Some(b',') => continue,
                Some(b']') => return self.event(Event::SequenceEnd, self.span()),
                _ => return not_json(),
            }
        }
    }

    /// A number, `true`, `false` or `null`: handed over as a plain scalar, resolved by the builder
    /// exactly as the YAML reader's scalars are.
    fn word(&mut self) -> Result<String, Stop> {
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
        let text = std::str::from_utf8(self.bytes.get(start..self.pos).ok_or(Stop::NotPlainJson)?)
            .map_err(|_| Stop::NotPlainJson)?;
        Ok(text.to_string())
    }

    /// A double-quoted string with JSON escapes, which YAML's double-quoted style reads the same.
    fn string(&mut self) -> Result<String, Stop> {
        self.bump();
        let mut out = Vec::new();
        loop {
            // Copy the run up to the next quote, backslash or control character at once.
            let rest = self.bytes.get(self.pos..).ok_or(Stop::NotPlainJson)?;
            let run =
                rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).ok_or(Stop::NotPlainJson)?;
            out.extend_from_slice(rest.get(..run).ok_or(Stop::NotPlainJson)?);
            for _ in 0..run {
                self.bump();
            }
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
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => return not_json(), // a raw control character: JSON forbids it
            }
        }
        String::from_utf8(out).map_err(|_| Stop::NotPlainJson)
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
    use super::*;

    /// The YAML reader on the same text, with the fast path out of the way.
    fn by_yaml(text: &str) -> Result<Node, Vec<Diagnostic>> {
        let mut builder = Builder::default();
        let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
        loop {
            let (event, mark) = parser.next_token().unwrap();
            if let Flow::Done = builder.event(event, super::super::span_of(&mark)).map_err(|d| vec![*d])? {
                break;
            }
        }
        builder.finish()
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
}
