//! Number formatting for the per-request path without `core::fmt`.
//!
//! `format!` goes through dynamic dispatch and padding logic; inside Envoy's wasm VM that showed up
//! as a tenth of the filter's own time per request (host-test profile, BENCHMARKS.md). Header
//! values and shared-data key names are built with these instead.

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i = i.saturating_sub(1);
        if let Some(d) = digits.get_mut(i) {
            *d = b'0'.saturating_add((n % 10) as u8);
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for &d in digits.get(i..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// `n` as decimal text.
pub fn u64_text(n: u64) -> String {
    let mut s = String::with_capacity(20);
    push_u64(&mut s, n);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn same_digits_as_display(n in any::<u64>()) {
            prop_assert_eq!(u64_text(n), n.to_string());
        }
    }

    #[test]
    fn edges() {
        for n in [0, 9, 10, 99, 100, u64::MAX] {
            assert_eq!(u64_text(n), n.to_string());
        }
        let mut s = String::from("slot/");
        push_u64(&mut s, 42);
        assert_eq!(s, "slot/42");
    }
}
