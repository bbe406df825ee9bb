//! The limits the service enforces, taken from a policy document: every policy with a
//! `global_rate_limit`, found by its RLS domain and its descriptor.
//!
//! A descriptor names a limit as breakwater's filter sends it: the first entry is
//! `policy = <policy name>`, then one entry per key part of the limit, in the policy's order,
//! keyed by the part as the policy writes it (`header:x-api-key = <value>`). Envoy's native
//! rate-limit filter sends the same descriptor with a `generic_key` action
//! (`descriptor_key: policy`) followed by `request_headers` actions (docs/global-limits.md).

use std::collections::HashMap;

use breakwater_policy::global::entry_names_part;
use breakwater_policy::model::{Document, GlobalRateLimit};
use sha2::{Digest, Sha256};

/// The descriptor entry that names the policy.
pub const POLICY_ENTRY: &str = "policy";

/// One global bucket's parameters, in the units the Redis script counts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub domain: String,
    pub policy: String,
    /// One token every `interval_us` microseconds (`per / rate`, rounded up: never more than the
    /// limit).
    pub interval_us: u64,
    pub burst: u64,
    pub rate: u64,
    pub per_ms: u64,
    /// The key parts' names, in order (the descriptor entries after `policy`).
    pub parts: Vec<String>,
}

impl Limit {
    pub fn new(domain: &str, policy: &str, g: &GlobalRateLimit) -> Limit {
        let per_ms = g.per.as_millis();
        Limit {
            domain: domain.to_string(),
            policy: policy.to_string(),
            interval_us: per_ms.saturating_mul(1000).div_ceil(g.rate.max(1)),
            burst: g.burst,
            rate: g.rate,
            per_ms,
            parts: g.key.iter().map(ToString::to_string).collect(),
        }
    }

    /// The Redis key of this limit's bucket for a key (the descriptor's values after `policy`).
    /// The braces are a Redis Cluster hash tag: a bucket is one key, so any slot will do, and a
    /// bucket's key never moves between slots.
    pub fn redis_key(&self, values: &[&str]) -> String {
        let mut h = Sha256::new();
        for v in values {
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("bw:{{{}:{}:{hex}}}", self.domain, self.policy)
    }
}

/// Why a descriptor names no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// No `policy` entry first, or a policy this document does not have (in this domain).
    Policy,
    /// The entries after `policy` are not the policy's key parts, in order.
    Parts,
}

/// Every global limit of a document, by domain and policy name.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    by_name: HashMap<(String, String), Limit>,
    domains: std::collections::HashSet<String>,
}

impl Limits {
    pub fn from_document(doc: &Document) -> Limits {
        let by_name = doc
            .policies
            .iter()
            .filter_map(|p| {
                let g = p.global_rate_limit.as_ref()?;
                Some(((g.domain.clone(), p.name.clone()), Limit::new(&g.domain, &p.name, g)))
            })
            .collect::<HashMap<_, _>>();
        let domains = by_name.keys().map(|(d, _)| d.clone()).collect();
        Limits { by_name, domains }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether some limit is in `domain`.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Limit> {
        self.by_name.values()
    }

    /// The limit a descriptor names, and the key values it carries.
    pub fn resolve<'d>(
        &self,
        domain: &str,
        entries: &'d [(String, String)],
    ) -> Result<(&Limit, Vec<&'d str>), Unknown> {
        let Some(((first, policy), rest)) = entries.split_first().map(|((k, v), rest)| ((k, v), rest)) else {
            return Err(Unknown::Policy);
        };
        if first != POLICY_ENTRY {
            return Err(Unknown::Policy);
        }
        let limit = self.by_name.get(&(domain.to_string(), policy.clone())).ok_or(Unknown::Policy)?;
        if rest.len() != limit.parts.len()
            || rest.iter().zip(&limit.parts).any(|((k, _), part)| !entry_names_part(k, part))
        {
            return Err(Unknown::Parts);
        }
        Ok((limit, rest.iter().map(|(_, v)| v.as_str()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> Limits {
        Limits::from_document(&breakwater_policy::load_bytes(yaml.as_bytes()).unwrap().document)
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn descriptors_name_a_policy_and_its_key_parts_in_order() {
        let l = limits(
            "version: 1\npolicies:\n  - name: api\n    match: { path_prefix: /api }\n    global_rate_limit: { rate: 3, per: 1s, key: [\"header:x-api-key\", method] }\n  - name: other\n    global_rate_limit: { rate: 10, per: 1m, domain: edge }\n",
        );
        assert_eq!(l.len(), 2);
        let e = entries(&[("policy", "api"), ("header:x-api-key", "k1"), ("method", "GET")]);
        let (limit, values) = l.resolve("breakwater", &e).unwrap();
        assert_eq!((limit.interval_us, limit.burst, values), (333_334, 3, vec!["k1", "GET"]));
        assert_eq!(l.resolve("edge", &entries(&[("policy", "other")])).unwrap().0.interval_us, 6_000_000);
        assert_eq!(l.resolve("breakwater", &entries(&[("policy", "other")])).unwrap_err(), Unknown::Policy);
        assert_eq!(l.resolve("breakwater", &entries(&[("policy", "api")])).unwrap_err(), Unknown::Parts);
        let swapped = entries(&[("policy", "api"), ("method", "GET"), ("header:x-api-key", "k1")]);
        assert_eq!(l.resolve("breakwater", &swapped).unwrap_err(), Unknown::Parts);
        assert_eq!(l.resolve("breakwater", &entries(&[("key", "api")])).unwrap_err(), Unknown::Policy);
        // Envoy's remote_address action names the client's address its own way.
        let ip = limits(
            "version: 1\npolicies:\n  - name: ip\n    global_rate_limit: { rate: 3, key: [client_ip] }\n",
        );
        for key in ["client_ip", "remote_address"] {
            assert!(
                ip.resolve("breakwater", &entries(&[("policy", "ip"), (key, "10.0.0.1")])).is_ok(),
                "{key}"
            );
        }
        assert_eq!(l.resolve("breakwater", &[]).unwrap_err(), Unknown::Policy);
    }

    #[test]
    fn redis_keys_separate_values_and_carry_one_hash_tag() {
        let l = limits(
            "version: 1\npolicies:\n  - name: api\n    global_rate_limit: { rate: 3, key: [host, path] }\n",
        );
        let limit = l.iter().next().unwrap();
        let a = limit.redis_key(&["ab", "c"]);
        assert_ne!(a, limit.redis_key(&["a", "bc"]));
        assert_eq!(a, limit.redis_key(&["ab", "c"]));
        assert!(
            a.starts_with("bw:{breakwater:api:") && a.ends_with('}') && a.matches('{').count() == 1,
            "{a}"
        );
    }
}
