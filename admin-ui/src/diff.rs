//! A unified diff read back into rows for display: each line with its number on the old and the
//! new side, and the side-by-side pairing (a run of removed lines beside the run of added lines
//! that replaces it).

/// One line of a unified diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A hunk's header (`@@ -3,7 +3,7 @@`).
    Hunk(String),
    Same {
        old: usize,
        new: usize,
        text: String,
    },
    Removed {
        old: usize,
        text: String,
    },
    Added {
        new: usize,
        text: String,
    },
}

/// The lines of a unified diff (the `---`/`+++` headers left out).
pub fn lines(unified: &str) -> Vec<Line> {
    let (mut old, mut new) = (0usize, 0usize);
    let mut out = Vec::new();
    let mut in_hunks = false;
    for l in unified.lines() {
        // The file headers come before the first hunk; after it, `--- x` is a removed `-- x`.
        if !in_hunks && (l.starts_with("--- ") || l.starts_with("+++ ")) {
            continue;
        }
        if let Some(rest) = l.strip_prefix("@@ ") {
            // `-a,b +c,d @@`: the next lines are numbered from a and c.
            let mut parts = rest.split_whitespace();
            let start = |p: Option<&str>| {
                p.and_then(|p| p.get(1..)).and_then(|p| p.split(',').next()).and_then(|n| n.parse().ok())
            };
            old = start(parts.next()).unwrap_or(1);
            new = start(parts.next()).unwrap_or(1);
            in_hunks = true;
            out.push(Line::Hunk(l.to_string()));
        } else if let Some(text) = l.strip_prefix('-') {
            out.push(Line::Removed { old, text: text.to_string() });
            old += 1;
        } else if let Some(text) = l.strip_prefix('+') {
            out.push(Line::Added { new, text: text.to_string() });
            new += 1;
        } else if l.starts_with('\\') {
            // "\ No newline at end of file"
        } else {
            let text = l.strip_prefix(' ').unwrap_or(l).to_string();
            out.push(Line::Same { old, new, text });
            old += 1;
            new += 1;
        }
    }
    out
}

/// One row of the side-by-side view: the old side and the new side (None: nothing there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Hunk(String),
    Pair { old: Option<(usize, String)>, new: Option<(usize, String)>, changed: bool },
}

/// The side-by-side rows: context on both sides; removed lines beside the added lines that follow
/// them.
pub fn side_by_side(lines: &[Line]) -> Vec<Row> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(line) = lines.get(i) {
        match line {
            Line::Hunk(h) => {
                out.push(Row::Hunk(h.clone()));
                i += 1;
            }
            Line::Same { old, new, text } => {
                out.push(Row::Pair {
                    old: Some((*old, text.clone())),
                    new: Some((*new, text.clone())),
                    changed: false,
                });
                i += 1;
            }
            Line::Removed { .. } | Line::Added { .. } => {
                let mut removed = Vec::new();
                let mut added = Vec::new();
                while let Some(Line::Removed { old, text }) = lines.get(i) {
                    removed.push((*old, text.clone()));
                    i += 1;
                }
                while let Some(Line::Added { new, text }) = lines.get(i) {
                    added.push((*new, text.clone()));
                    i += 1;
                }
                let n = removed.len().max(added.len());
                let (mut removed, mut added) = (removed.into_iter(), added.into_iter());
                for _ in 0..n {
                    out.push(Row::Pair { old: removed.next(), new: added.next(), changed: true });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIFIED: &str = "--- version 1\n+++ version 2\n@@ -2,4 +2,5 @@\n policies:\n   - name: a\n-    rate_limit: { rate: 100 }\n+    rate_limit: { rate: 50 }\n+    timeout: 2s\n   - name: b\n";

    #[test]
    fn numbers_each_side() {
        let l = lines(UNIFIED);
        assert_eq!(l[0], Line::Hunk("@@ -2,4 +2,5 @@".into()));
        assert_eq!(l[1], Line::Same { old: 2, new: 2, text: "policies:".into() });
        assert_eq!(l[3], Line::Removed { old: 4, text: "    rate_limit: { rate: 100 }".into() });
        assert_eq!(l[4], Line::Added { new: 4, text: "    rate_limit: { rate: 50 }".into() });
        assert_eq!(l[5], Line::Added { new: 5, text: "    timeout: 2s".into() });
        assert_eq!(l[6], Line::Same { old: 5, new: 6, text: "  - name: b".into() });
        assert!(lines("").is_empty());
        // A removed line that reads like a header (a `-- x` in a block scalar).
        let l = lines("--- a\n+++ b\n@@ -1,2 +1,1 @@\n--- x\n keep\n");
        assert_eq!(l[1], Line::Removed { old: 1, text: "-- x".into() });
        assert_eq!(l[2], Line::Same { old: 2, new: 1, text: "keep".into() });
    }

    #[test]
    fn pairs_a_replacement_beside_what_it_replaces() {
        let rows = side_by_side(&lines(UNIFIED));
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows[3],
            Row::Pair {
                old: Some((4, "    rate_limit: { rate: 100 }".into())),
                new: Some((4, "    rate_limit: { rate: 50 }".into())),
                changed: true
            }
        );
        assert_eq!(rows[4], Row::Pair { old: None, new: Some((5, "    timeout: 2s".into())), changed: true });
        assert!(matches!(&rows[5], Row::Pair { changed: false, .. }));
    }
}
