//! Rules that involve more than one field: things each field's own decoder cannot see.

use std::collections::HashMap;

use crate::diag::Diagnostic;
use crate::model::*;
use crate::read::SpanIndex;

/// Checks a decoded document; returns errors and warnings.
pub fn check(doc: &Document, spans: &SpanIndex) -> Vec<Diagnostic> {
    check_with(doc, spans, true)
}

/// Errors only: skips the pairwise shadowing analysis (quadratic in the number of policies),
/// whose findings are warnings that only an author can act on.
pub fn check_errors(doc: &Document) -> Vec<Diagnostic> {
    check_with(doc, &SpanIndex::default(), false)
}

fn check_with(doc: &Document, spans: &SpanIndex, warnings: bool) -> Vec<Diagnostic> {
    let mut out = Checks { spans, diags: Vec::new() };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, p) in doc.policies.iter().enumerate() {
        // Paths are written out only for a finding (a document of many policies has none).
        let path = PolicyPath(i);
        if !p.name.is_empty()
            && let Some(first) = seen.insert(&p.name, i)
        {
            out.error(
                &format!("{path}.name"),
                format!("duplicate policy name `{}` (also policies[{first}])", p.name),
            );
        }
        out.policy(p, path);
        let earlier_policies = if warnings { i } else { 0 };
        for (j, earlier) in doc.policies.iter().enumerate().take(earlier_policies) {
            if covers(&earlier.matcher, &p.matcher) {
                out.warning(
                    &format!("{path}.match"),
                    format!(
                        "this policy never applies: policies[{j}] (`{}`) matches every request it matches, and the first matching policy wins",
                        earlier.name
                    ),
                );
                break;
            }
        }
    }
    if warnings && doc.trust_attempt_count_header && doc.policies.iter().all(|p| p.retry.is_none()) {
        out.warning(
            "trust_attempt_count_header",
            "no policy retries, so the attempt count is never read: this setting does nothing".into(),
        );
    }
    out.diags
}

/// `policies[i]`, written out when displayed.
#[derive(Clone, Copy)]
struct PolicyPath(usize);

impl std::fmt::Display for PolicyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policies[{}]", self.0)
    }
}

struct Checks<'a> {
    spans: &'a SpanIndex,
    diags: Vec<Diagnostic>,
}

impl Checks<'_> {
    /// Positions the diagnostic at `path`, or its nearest visited parent.
    fn locate(&self, mut d: Diagnostic) -> Diagnostic {
        let mut p = d.path.as_str();
        loop {
            if let Some(span) = self.spans.get(p) {
                d.span = Some(span);
                return d;
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => return d,
            }
        }
    }

    fn error(&mut self, path: &str, message: String) {
        let d = self.locate(Diagnostic::error(path, message));
        self.diags.push(d);
    }

    fn warning(&mut self, path: &str, message: String) {
        let d = self.locate(Diagnostic::warning(path, message));
        self.diags.push(d);
    }

    fn policy(&mut self, p: &Policy, path: PolicyPath) {
        let m = &p.matcher;
        if m.path.is_some() && m.path_prefix.is_some() {
            self.error(
                &format!("{path}.match.path_prefix"),
                "give either `path` (exact) or `path_prefix`, not both".into(),
            );
        }
        if let Some(cb) = &p.circuit_breaker {
            let at = format_args!("{path}.circuit_breaker");
            if let Window::Calls(n) = cb.window
                && cb.minimum_calls > n
            {
                self.error(
                    &format!("{at}.minimum_calls"),
                    format!("must be at most the window ({n} calls), or the breaker can never open"),
                );
            }
            if let (Some(slow), Some(timeout)) = (&cb.slow_call, p.timeout)
                && slow.duration >= timeout
            {
                self.warning(
                        &format!("{at}.slow_call.duration"),
                        format!("no call can be slower than {} because timeout is {timeout}; the slow-call rule never applies", slow.duration),
                    );
            }
        }
        if let Some(r) = &p.retry {
            let at = format_args!("{path}.retry");
            let by_status = r.retry_on.contains(&RetryOn::RetriableStatusCodes);
            if !r.statuses.is_empty() && !by_status {
                self.error(
                    &format!("{at}.statuses"),
                    "statuses are only used with `retriable-status-codes` in retry_on; add it or remove statuses".into(),
                );
            }
            if by_status && r.statuses.is_empty() {
                self.error(
                    &format!("{at}.retry_on"),
                    "`retriable-status-codes` needs `statuses` (the codes to retry)".into(),
                );
            }
            if let Some(m) = r.methods.iter().find(|m| *m == "POST" || *m == "PATCH") {
                self.warning(
                    &format!("{at}.methods"),
                    format!("{m} is not idempotent: a retry may apply the request twice"),
                );
            }
            if let (Some(per_try), Some(timeout)) = (r.per_try_timeout, p.timeout)
                && per_try >= timeout
            {
                self.error(
                    &format!("{at}.per_try_timeout"),
                    format!("must be shorter than timeout ({timeout})"),
                );
            }
        }
    }
}

/// True when every request matched by `later` is also matched by `earlier`.
pub fn covers(earlier: &Match, later: &Match) -> bool {
    let hosts = match (&earlier.hosts, &later.hosts) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|lh| e.iter().any(|eh| host_covers(eh, lh))),
    };
    let path = match (&earlier.path, &earlier.path_prefix) {
        (None, None) => true,
        (Some(exact), _) => later.path.as_ref() == Some(exact),
        (None, Some(prefix)) => {
            later.path.as_ref().or(later.path_prefix.as_ref()).is_some_and(|l| l.starts_with(prefix.as_str()))
        }
    };
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    };
    let headers = earlier.headers.iter().all(|(name, value)| match later.headers.get(name) {
        Some(v) => value == "*" || v == value,
        None => false,
    });
    hosts && path && methods && headers
}

fn host_covers(earlier: &str, later: &str) -> bool {
    if earlier == later {
        return true;
    }
    match earlier.strip_prefix("*.") {
        // `*.example.com` covers `a.example.com` and `*.a.example.com`, not `example.com`.
        Some(suffix) => later.strip_prefix("*.").unwrap_or(later).ends_with(&format!(".{suffix}")),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hosts: Option<&[&str]>, prefix: Option<&str>, methods: Option<&[&str]>) -> Match {
        Match {
            hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
            path_prefix: prefix.map(String::from),
            methods: methods.map(|h| h.iter().map(|s| Text::from(s.to_string())).collect()),
            ..Match::default()
        }
    }

    #[test]
    fn coverage_of_matches() {
        let all = Match::default();
        let api = m(None, Some("/api"), None);
        let checkout = m(Some(&["shop.example.com"]), Some("/api/checkout"), Some(&["POST"]));
        assert!(covers(&all, &checkout));
        assert!(covers(&api, &checkout));
        assert!(!covers(&checkout, &api));
        assert!(covers(&m(Some(&["*.example.com"]), None, None), &checkout));
        assert!(!covers(&m(Some(&["*.example.com"]), None, None), &m(Some(&["example.com"]), None, None)));
        assert!(!covers(&m(None, None, Some(&["GET"])), &checkout));
        let mut tenant = Match::default();
        tenant.headers.insert("x-tenant".into(), "*".into());
        let mut gold = Match::default();
        gold.headers.insert("x-tenant".into(), "gold".into());
        assert!(covers(&tenant, &gold));
        assert!(!covers(&gold, &tenant));
    }
}
