//! Turning a [`Node`] tree into a [`Document`], reporting *every* problem, each at its path.
//!
//! A field with a bad value is reported and replaced by its default so that decoding goes on and
//! the rest of the document is checked too; the result is only used when no error was found.
//! Positions of every visited path are kept in a [`SpanIndex`] so that the cross-field checks in
//! [`crate::check`] can point at lines as well.

use std::collections::{BTreeMap, HashMap};

use crate::diag::{Diagnostic, Span};
use crate::model::*;
use crate::source::{Node, Value, key_text, same_key};

/// Where each decoded path was written.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex(HashMap<String, Span>);

impl SpanIndex {
    pub fn get(&self, path: &str) -> Option<Span> {
        self.0.get(path).copied()
    }
}

/// The fields each object accepts; also the source of "did you mean" suggestions. A test checks
/// these lists against the JSON Schema so that the two cannot drift apart.
pub const DOCUMENT_FIELDS: &[&str] = &["version", "debug_headers", "trust_attempt_count_header", "policies"];
pub const POLICY_FIELDS: &[&str] = &[
    "name",
    "match",
    "mode",
    "failure_mode",
    "rate_limit",
    "concurrency_limit",
    "circuit_breaker",
    "retry",
    "timeout",
    "fallback",
];
pub const MATCH_FIELDS: &[&str] = &["hosts", "path", "path_prefix", "methods", "headers"];
pub const RATE_LIMIT_FIELDS: &[&str] = &["rate", "per", "burst", "key", "max_keys", "response"];
pub const CONCURRENCY_FIELDS: &[&str] = &["max_in_flight", "key", "max_keys", "response"];
pub const BREAKER_FIELDS: &[&str] = &[
    "window",
    "minimum_calls",
    "failure_rate",
    "slow_call",
    "failure_on",
    "open_for",
    "half_open_calls",
    "response",
];
pub const SLOW_CALL_FIELDS: &[&str] = &["duration", "rate"];
pub const RETRY_FIELDS: &[&str] =
    &["max_retries", "retry_on", "statuses", "per_try_timeout", "methods", "budget"];
pub const BUDGET_FIELDS: &[&str] = &["percent", "min_per_second"];
pub const FALLBACK_FIELDS: &[&str] = &["on", "response"];
pub const RESPONSE_FIELDS: &[&str] = &["status", "headers", "body"];

/// Every field list of the language.
const FIELD_LISTS: [&[&str]; 11] = [
    DOCUMENT_FIELDS,
    POLICY_FIELDS,
    MATCH_FIELDS,
    RATE_LIMIT_FIELDS,
    CONCURRENCY_FIELDS,
    BREAKER_FIELDS,
    SLOW_CALL_FIELDS,
    RETRY_FIELDS,
    BUDGET_FIELDS,
    FALLBACK_FIELDS,
    RESPONSE_FIELDS,
];

/// The field names of the policy language, as `'static` text (for readers that want to borrow
/// rather than copy a key they recognise).
///
/// Looked up by length, then by first and last byte, then compared: a configuration has tens of
/// keys per policy, and a binary search over all names compared each key with six of them.
pub(crate) fn field_name(text: &str) -> Option<&'static str> {
    static BY_LEN: std::sync::OnceLock<Vec<Vec<&'static str>>> = std::sync::OnceLock::new();
    let by_len = BY_LEN.get_or_init(|| {
        let all: Vec<&'static str> = FIELD_LISTS.concat();
        let mut by_len: Vec<Vec<&'static str>> = Vec::new();
        for name in all {
            if by_len.len() <= name.len() {
                by_len.resize(name.len() + 1, Vec::new());
            }
            if let Some(bucket) = by_len.get_mut(name.len())
                && !bucket.contains(&name)
            {
                bucket.push(name);
            }
        }
        by_len
    });
    let (t, first, last) = (text.as_bytes(), text.as_bytes().first()?, text.as_bytes().last()?);
    by_len.get(text.len())?.iter().copied().find(|name| {
        let n = name.as_bytes();
        n.first() == Some(first) && n.last() == Some(last) && n == t
    })
}

/// Most policies in one document.
pub const MAX_POLICIES: usize = 10_000;
/// Longest reply body a policy may configure.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Decodes a document tree. Returns the document (meaningful only if no error was reported), the
/// diagnostics, and the position of every path.
pub fn decode(root: &Node) -> (Document, Vec<Diagnostic>, SpanIndex) {
    let mut d = Decoder::default();
    let doc = d.document(root);
    (doc, d.diags, d.spans)
}

/// As [`decode`], without the position index (the filter reports errors by path only, and
/// indexing every path of a large document costs more than decoding it).
pub fn decode_without_spans(root: &Node) -> (Document, Vec<Diagnostic>) {
    let mut d = Decoder { skip_spans: true, ..Decoder::default() };
    let doc = d.document(root);
    (doc, d.diags)
}

/// The reading primitives (also used by [`crate::scenario`]): each reports its own errors at the
/// path it is given and returns None for a value it could not read.
#[derive(Default)]
pub(crate) struct Decoder {
    pub(crate) diags: Vec<Diagnostic>,
    pub(crate) spans: SpanIndex,
    pub(crate) skip_spans: bool,
}

/// Where a value sits in the document (`policies[3].retry.max_retries`), kept as links to its
/// parent on the stack and written out only for a message or the position index: building every
/// path as a `String` cost about a third of decoding a large document.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Path<'a> {
    /// A path already written out (the document itself is `Text("")`).
    Text(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    pub(crate) const ROOT: Path<'static> = Path::Text("");

    pub(crate) fn field<'b>(&'b self, name: &'b str) -> Path<'b> {
        Path::Field(self, name)
    }

    pub(crate) fn index(&self, i: usize) -> Path<'_> {
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
pub(crate) struct Fields<'n, 'p> {
    pub(crate) path: Path<'p>,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n, '_> {
    pub(crate) fn get<'s>(&'s self, name: &'s str) -> Option<(&'n Node, Path<'s>)> {
        self.entries.iter().find(|(k, _)| same_key(k, name)).map(|(_, n)| (n, self.path.field(name)))
    }
}

pub(crate) fn join(path: &str, field: &str) -> String {
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

impl Decoder {
    pub(crate) fn error(&mut self, path: &Path<'_>, node: &Node, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(path.to_string(), message).with_span(node.span));
    }

    pub(crate) fn visit(&mut self, path: &Path<'_>, node: &Node) {
        if !self.skip_spans {
            self.spans.0.insert(path.to_string(), node.span);
        }
    }

    pub(crate) fn expected(&mut self, path: &Path<'_>, node: &Node, what: &str) {
        let found = node.value.kind();
        self.error(path, node, format!("expected {what}, found {found}"));
    }

    pub(crate) fn fields<'n, 'p>(
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

    pub(crate) fn seq<'n>(&mut self, node: &'n Node, path: &Path<'_>) -> Option<&'n [Node]> {
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
    pub(crate) fn list<T>(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        item: impl FnMut(&mut Self, &Node, &Path<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.list_of(node, path, item).map(|(items, _)| items)
    }

    /// As [`Self::list`], with whether every item decoded.
    pub(crate) fn list_of<T>(
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
    pub(crate) fn non_empty_list<T>(
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

    pub(crate) fn string(&mut self, node: &Node, path: &Path<'_>) -> Option<String> {
        self.str(node, path).map(str::to_string)
    }

    /// A string field, borrowed from the tree (for values that are parsed or compared, not kept).
    pub(crate) fn str<'n>(&mut self, node: &'n Node, path: &Path<'_>) -> Option<&'n str> {
        self.visit(path, node);
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.expected(path, node, "a string");
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, node: &Node, path: &Path<'_>) -> Option<bool> {
        self.visit(path, node);
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.expected(path, node, "true or false");
                None
            }
        }
    }

    pub(crate) fn int(&mut self, node: &Node, path: &Path<'_>, min: u64, max: u64) -> Option<u64> {
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

    pub(crate) fn int_as<T: TryFrom<u64>>(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        min: u64,
        max: u64,
    ) -> Option<T> {
        self.int(node, path, min, max).and_then(|v| T::try_from(v).ok())
    }

    /// A string-valued field parsed by `parse`, whose error message is the user-facing one.
    pub(crate) fn parsed<T>(
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

    pub(crate) fn duration(&mut self, node: &Node, path: &Path<'_>) -> Option<Duration> {
        if let Value::Int(_) = node.value {
            self.visit(path, node);
            self.error(path, node, "a duration needs a unit: 250ms, 1s, 2m, 1h");
            return None;
        }
        self.parsed(node, path, Duration::parse)
    }

    pub(crate) fn word<T: Copy>(&mut self, node: &Node, path: &Path<'_>, words: &[(&str, T)]) -> Option<T> {
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

    pub(crate) fn method(&mut self, node: &Node, path: &Path<'_>) -> Option<Text> {
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

    pub(crate) fn string_map(
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

    // ---- the document ----

    fn document(&mut self, node: &Node) -> Document {
        let mut doc = Document::default();
        let Some(f) = self.fields(node, &Path::ROOT, DOCUMENT_FIELDS) else {
            return doc;
        };
        match f.get("version") {
            Some((n, p)) => {
                if let Some(v) = self.int(n, &p, 0, u64::MAX)
                    && v != 1
                {
                    self.error(&p, n, format!("unsupported version {v}; this breakwater reads version 1"));
                }
            }
            None => {
                self.error(&Path::ROOT.field("version"), node, "missing field `version` (write `version: 1`)")
            }
        }
        if let Some((n, p)) = f.get("debug_headers") {
            doc.debug_headers = self.bool(n, &p).unwrap_or_default();
        }
        if let Some((n, p)) = f.get("trust_attempt_count_header") {
            doc.trust_attempt_count_header = self.bool(n, &p).unwrap_or_default();
        }
        match f.get("policies") {
            Some((n, p)) => {
                if let Value::Seq(items) = &n.value
                    && items.len() > MAX_POLICIES
                {
                    self.error(&p, n, format!("at most {MAX_POLICIES} policies, found {}", items.len()));
                    return doc;
                }
                if matches!(&n.value, Value::Seq(items) if items.is_empty()) {
                    self.diags.push(
                        Diagnostic::warning(
                            p.to_string(),
                            "the document has no policies: every request passes untouched",
                        )
                        .with_span(n.span),
                    );
                }
                // All or nothing: cross-field checks name policies by index, which must stay
                // the document's own.
                doc.policies = match self.list_of(n, &p, |d, n, p| d.policy(n, p)) {
                    Some((policies, true)) => policies,
                    _ => Vec::new(),
                };
            }
            None => self.error(&Path::ROOT.field("policies"), node, "missing field `policies`"),
        }
        doc
    }

    fn policy(&mut self, node: &Node, path: &Path<'_>) -> Option<Policy> {
        let f = self.fields(node, path, POLICY_FIELDS)?;
        let name = match f.get("name") {
            Some((n, p)) => self.parsed(n, &p, check_name).unwrap_or_default(),
            None => {
                self.error(&path.field("name"), node, "missing field `name`");
                String::new()
            }
        };
        let mut policy = Policy {
            name,
            matcher: Match::default(),
            mode: Mode::default(),
            failure_mode: FailureMode::default(),
            rate_limit: None,
            concurrency_limit: None,
            circuit_breaker: None,
            retry: None,
            timeout: None,
            fallback: None,
        };
        if let Some((n, p)) = f.get("match") {
            policy.matcher = self.matcher(n, &p);
        }
        if let Some((n, p)) = f.get("mode") {
            policy.mode =
                self.word(n, &p, &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)]).unwrap_or_default();
        }
        if let Some((n, p)) = f.get("failure_mode") {
            policy.failure_mode = self
                .word(n, &p, &[("allow", FailureMode::Allow), ("deny", FailureMode::Deny)])
                .unwrap_or_default();
        }
        if let Some((n, p)) = f.get("rate_limit") {
            policy.rate_limit = self.rate_limit(n, &p);
        }
        if let Some((n, p)) = f.get("concurrency_limit") {
            policy.concurrency_limit = self.concurrency_limit(n, &p);
        }
        if let Some((n, p)) = f.get("circuit_breaker") {
            policy.circuit_breaker = self.circuit_breaker(n, &p);
        }
        if let Some((n, p)) = f.get("retry") {
            policy.retry = self.retry(n, &p);
        }
        if let Some((n, p)) = f.get("timeout") {
            policy.timeout = self.duration(n, &p);
        }
        if let Some((n, p)) = f.get("fallback") {
            policy.fallback = self.fallback(n, &p);
        }
        Some(policy)
    }

    fn matcher(&mut self, node: &Node, path: &Path<'_>) -> Match {
        let mut m = Match::default();
        let Some(f) = self.fields(node, path, MATCH_FIELDS) else {
            return m;
        };
        if let Some((n, p)) = f.get("hosts") {
            let why = "an empty list matches nothing; remove `hosts` to match all";
            m.hosts = self.non_empty_list(n, &p, why, |d, n, p| d.parsed(n, p, check_host));
        }
        if let Some((n, p)) = f.get("path") {
            m.path = self.parsed(n, &p, check_path);
        }
        if let Some((n, p)) = f.get("path_prefix") {
            m.path_prefix = self.parsed(n, &p, check_path);
        }
        if let Some((n, p)) = f.get("methods") {
            let why = "an empty list matches nothing; remove `methods` to match all";
            m.methods = self.non_empty_list(n, &p, why, |d, n, p| d.method(n, p));
        }
        if let Some((n, p)) = f.get("headers") {
            m.headers = self.string_map(n, &p, |d, name, value, key, p| {
                if !is_header_name(name) {
                    d.error(p, key, format!("`{name}` is not a lower-case header name"));
                } else if value.is_empty() {
                    d.error(p, key, "give a value, or `*` for \"present with any value\"");
                }
            });
        }
        m
    }

    fn keys(&mut self, f: &Fields<'_, '_>) -> Vec<KeyPart> {
        match f.get("key") {
            Some((n, p)) => self.list(n, &p, |d, n, p| d.parsed(n, p, KeyPart::parse)).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    fn max_keys(&mut self, f: &Fields<'_, '_>) -> u32 {
        f.get("max_keys")
            .and_then(|(n, p)| self.int_as(n, &p, 1, 10_000_000))
            .unwrap_or_else(default_max_keys)
    }

    fn rate_limit(&mut self, node: &Node, path: &Path<'_>) -> Option<RateLimit> {
        let f = self.fields(node, path, RATE_LIMIT_FIELDS)?;
        let rate = match f.get("rate") {
            Some((n, p)) => self.int(n, &p, 1, 1_000_000_000).unwrap_or(1),
            None => {
                self.error(&path.field("rate"), node, "missing field `rate` (tokens per `per`)");
                1
            }
        };
        let per = f.get("per").and_then(|(n, p)| self.duration(n, &p)).unwrap_or_else(default_per);
        let burst = f.get("burst").and_then(|(n, p)| self.int(n, &p, 1, 1_000_000_000)).unwrap_or(rate);
        let key = self.keys(&f);
        let max_keys = self.max_keys(&f);
        let response = self.response_or(&f, default_rate_limit_response);
        Some(RateLimit { rate, per, burst, key, max_keys, response })
    }

    fn concurrency_limit(&mut self, node: &Node, path: &Path<'_>) -> Option<ConcurrencyLimit> {
        let f = self.fields(node, path, CONCURRENCY_FIELDS)?;
        let max_in_flight = match f.get("max_in_flight") {
            Some((n, p)) => self.int_as(n, &p, 1, 1_000_000).unwrap_or(1),
            None => {
                self.error(&path.field("max_in_flight"), node, "missing field `max_in_flight`");
                1
            }
        };
        let key = self.keys(&f);
        let max_keys = self.max_keys(&f);
        let response = self.response_or(&f, default_concurrency_response);
        Some(ConcurrencyLimit { max_in_flight, key, max_keys, response })
    }

    fn outcomes(&mut self, node: &Node, path: &Path<'_>) -> Option<Vec<Outcome>> {
        let why = "an empty list names no outcome; list outcomes or remove the field for the defaults";
        self.non_empty_list(node, path, why, |d, n, p| match &n.value {
            Value::Int(code) => {
                d.visit(p, n);
                match Outcome::parse(&code.to_string()) {
                    Ok(o) => Some(o),
                    Err(m) => {
                        d.error(p, n, m);
                        None
                    }
                }
            }
            _ => d.parsed(n, p, Outcome::parse),
        })
    }

    fn circuit_breaker(&mut self, node: &Node, path: &Path<'_>) -> Option<CircuitBreaker> {
        let f = self.fields(node, path, BREAKER_FIELDS)?;
        let window = match f.get("window") {
            Some((n, p)) => match &n.value {
                Value::Int(_) | Value::BigInt(_) | Value::Float(_) => {
                    self.int_as(n, &p, 1, u64::from(MAX_WINDOW_CALLS)).map(Window::Calls)
                }
                _ => self.duration(n, &p).and_then(|d| {
                    if (1000..=3_600_000).contains(&d.as_millis()) {
                        Some(Window::Time(d))
                    } else {
                        self.error(&p, n, "a time window must be between 1s and 1h");
                        None
                    }
                }),
            },
            None => None,
        }
        .unwrap_or_else(default_window);
        let minimum_calls = f
            .get("minimum_calls")
            .and_then(|(n, p)| self.int_as(n, &p, 1, 1_000_000))
            .unwrap_or_else(default_minimum_calls);
        let failure_rate = f
            .get("failure_rate")
            .and_then(|(n, p)| self.int_as(n, &p, 1, 100))
            .unwrap_or_else(default_failure_rate);
        let slow_call = f.get("slow_call").and_then(|(n, p)| {
            let s = self.fields(n, &p, SLOW_CALL_FIELDS)?;
            let duration = match s.get("duration") {
                Some((n, p)) => self.duration(n, &p),
                None => {
                    self.error(&p.field("duration"), n, "missing field `duration`");
                    None
                }
            };
            let rate = match s.get("rate") {
                Some((n, p)) => self.int_as(n, &p, 1, 100),
                None => {
                    self.error(&p.field("rate"), n, "missing field `rate` (percent of slow calls)");
                    None
                }
            };
            Some(SlowCall { duration: duration?, rate: rate? })
        });
        let failure_on =
            f.get("failure_on").and_then(|(n, p)| self.outcomes(n, &p)).unwrap_or_else(default_failure_on);
        let open_for =
            f.get("open_for").and_then(|(n, p)| self.duration(n, &p)).unwrap_or_else(default_open_for);
        let half_open_calls = f
            .get("half_open_calls")
            .and_then(|(n, p)| self.int_as(n, &p, 1, 1000))
            .unwrap_or_else(default_half_open_calls);
        let response = self.response_or(&f, default_breaker_response);
        Some(CircuitBreaker {
            window,
            minimum_calls,
            failure_rate,
            slow_call,
            failure_on,
            open_for,
            half_open_calls,
            response,
        })
    }

    fn retry(&mut self, node: &Node, path: &Path<'_>) -> Option<Retry> {
        let f = self.fields(node, path, RETRY_FIELDS)?;
        let max_retries = f
            .get("max_retries")
            .and_then(|(n, p)| self.int_as(n, &p, 0, 10))
            .unwrap_or_else(default_max_retries);
        let words = RetryOn::ALL.map(|r| (r.as_str(), r));
        let retry_on = f
            .get("retry_on")
            .and_then(|(n, p)| {
                let why = "name at least one condition to retry on";
                self.non_empty_list(n, &p, why, |d, n, p| d.word(n, p, &words))
            })
            .unwrap_or_else(default_retry_on);
        let statuses = f
            .get("statuses")
            .and_then(|(n, p)| self.list(n, &p, |d, n, p| d.int_as(n, p, 100, 599)))
            .unwrap_or_default();
        let per_try_timeout = f.get("per_try_timeout").and_then(|(n, p)| self.duration(n, &p));
        let methods = f
            .get("methods")
            .and_then(|(n, p)| {
                let why = "an empty list retries nothing; remove it for the idempotent methods";
                self.non_empty_list(n, &p, why, |d, n, p| d.method(n, p))
            })
            .unwrap_or_else(default_retry_methods);
        let budget = f
            .get("budget")
            .and_then(|(n, p)| {
                let b = self.fields(n, &p, BUDGET_FIELDS)?;
                Some(Budget {
                    percent: b
                        .get("percent")
                        .and_then(|(n, p)| self.int_as(n, &p, 0, 100))
                        .unwrap_or_else(default_budget_percent),
                    min_per_second: b
                        .get("min_per_second")
                        .and_then(|(n, p)| self.int_as(n, &p, 0, 1_000_000))
                        .unwrap_or_else(default_budget_min_per_second),
                })
            })
            .unwrap_or_default();
        Some(Retry { max_retries, retry_on, statuses, per_try_timeout, methods, budget })
    }

    fn fallback(&mut self, node: &Node, path: &Path<'_>) -> Option<Fallback> {
        let f = self.fields(node, path, FALLBACK_FIELDS)?;
        let on = f.get("on").and_then(|(n, p)| self.outcomes(n, &p)).unwrap_or_else(default_fallback_on);
        let response = match f.get("response") {
            Some((n, p)) => self.response(n, &p, None)?,
            None => {
                self.error(
                    &path.field("response"),
                    node,
                    "missing field `response` (the reply to send instead)",
                );
                return None;
            }
        };
        Some(Fallback { on, response })
    }

    fn response_or(&mut self, f: &Fields<'_, '_>, default: fn() -> Response) -> Response {
        match f.get("response") {
            Some((n, p)) => {
                let d = default();
                self.response(n, &p, Some(d.status)).unwrap_or(d)
            }
            None => default(),
        }
    }

    fn response(&mut self, node: &Node, path: &Path<'_>, default_status: Option<u16>) -> Option<Response> {
        let f = self.fields(node, path, RESPONSE_FIELDS)?;
        let status = match (f.get("status"), default_status) {
            (Some((n, p)), _) => self.int_as(n, &p, 200, 599)?,
            (None, Some(s)) => s,
            (None, None) => {
                self.error(&path.field("status"), node, "missing field `status`");
                return None;
            }
        };
        let headers = match f.get("headers") {
            Some((n, p)) => self.string_map(n, &p, |d, name, value, key, p| {
                if !is_header_name(name) {
                    d.error(p, key, format!("`{name}` is not a lower-case header name"));
                } else if value.contains(['\r', '\n', '\0']) {
                    d.error(p, key, "header values must not contain line breaks or NUL");
                } else if matches!(name, "content-length" | "transfer-encoding" | "connection") {
                    d.error(p, key, format!("`{name}` is set by Envoy; remove it"));
                }
            }),
            None => BTreeMap::new(),
        };
        let body = match f.get("body") {
            Some((n, p)) => {
                let body = self.string(n, &p)?;
                if body.len() > MAX_BODY_BYTES {
                    self.error(&p, n, format!("a reply body may have at most {MAX_BODY_BYTES} bytes"));
                    return None;
                }
                body
            }
            None => String::new(),
        };
        let headers = headers.into_iter().map(|(k, v)| (Text::Owned(k), Text::Owned(v))).collect();
        Some(Response { status, headers, body: Text::Owned(body) })
    }
}

fn check_name(name: &str) -> Result<String, String> {
    let b = name.as_bytes();
    let ok_inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let ok_edge = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if b.len() > 63 || !b.iter().all(ok_inner) || !ok_edge(b.first()) || !ok_edge(b.last()) {
        return Err(format!(
            "`{name}` is not a valid name: 1-63 lower-case letters, digits and `-`, starting and ending with a letter or digit"
        ));
    }
    Ok(name.to_string())
}

fn check_host(host: &str) -> Result<String, String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.contains(':') {
        return Err(format!(
            "`{host}`: hosts are matched without their port; remove `:{}`",
            host.rsplit(':').next().unwrap_or_default()
        ));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{host}`: write hosts in lower case"));
    }
    if bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a host name (exact, or `*.` followed by a suffix)"));
    }
    Ok(host.to_string())
}

fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path.contains('?') || path.contains('#') {
        return Err("paths are matched without the query string; remove `?...`".into());
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("paths must not contain spaces or control characters".into());
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_name_is_found_and_nothing_else() {
        for name in FIELD_LISTS.concat() {
            assert_eq!(field_name(name), Some(name));
            // Same length, same first and last byte, one byte off; a prefix; a longer word.
            let mut near = name.as_bytes().to_vec();
            if near.len() > 2 {
                near[1] = b'#';
                assert_eq!(field_name(std::str::from_utf8(&near).unwrap()), None, "{name}");
            }
            // Another word is found only as itself (`on` is a name and a prefix of none here).
            for other in [&name[..name.len() - 1], &format!("{name}s")] {
                assert!(field_name(other).is_none_or(|f| f == other), "{other}");
            }
        }
        assert_eq!(field_name(""), None);
    }

    #[test]
    fn suggestions_find_near_misses_only() {
        assert_eq!(suggest("rate_limt", POLICY_FIELDS), Some("rate_limit"));
        assert_eq!(suggest("max_retry", RETRY_FIELDS), Some("max_retries"));
        assert_eq!(suggest("zzz", POLICY_FIELDS), None);
    }

    #[test]
    fn names_hosts_and_paths() {
        assert!(check_name("checkout-v2").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("shop.example.com:8080").unwrap_err().contains("port"));
        assert!(check_host("Shop.example.com").is_err());
        assert!(check_host("*").is_err());
        assert!(check_path("/api").is_ok());
        assert!(check_path("api").is_err());
        assert!(check_path("/a?b").is_err());
    }
}
