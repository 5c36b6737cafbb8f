//! Integers between bounds as GBNF: the decimal spellings (no leading
//! zeros) of every integer in `[min, max]`.
//!
//! Numbers with whole bounds are written the same way, with a fraction
//! and no exponent.
//!
//! An open side stops at 16 digits, as llama.cpp's integer rule does. Like
//! llama.cpp's converter, a range that reaches below zero from 0 or above
//! also takes `-0` (a JSON spelling of zero).

/// The largest magnitude an open side reaches: 16 digits.
pub const OPEN_LIMIT: u64 = 9_999_999_999_999_999;

/// GBNF for the integers from `min` to `max` (`None`: open on that side).
/// `None` is returned for an empty range.
pub fn integer_range(min: Option<i64>, max: Option<i64>) -> Option<String> {
    if let (Some(a), Some(b)) = (min, max) {
        if a > b {
            return None;
        }
    }
    let mut alts = Vec::new();
    // Negative numbers: "-" and a magnitude.
    let neg = match (min, max) {
        (_, Some(b)) if b < 0 => Some((b.unsigned_abs(), min.map_or(OPEN_LIMIT, |a| a.unsigned_abs()))),
        (Some(a), _) if a < 0 => Some((0, a.unsigned_abs())),
        (None, _) => Some((1, OPEN_LIMIT)),
        _ => None,
    };
    if let Some((lo, hi)) = neg {
        alts.push(format!("\"-\" ( {} )", magnitudes(lo, hi.min(OPEN_LIMIT))));
    }
    // Zero and positive numbers.
    if max.is_none_or(|b| b >= 0) {
        let lo = min.map_or(0, |a| a.max(0) as u64);
        let hi = max.map_or(OPEN_LIMIT, |b| b as u64);
        if lo <= hi {
            alts.push(magnitudes(lo, hi));
        }
    }
    Some(alts.join(" | "))
}

/// Any fraction, or none.
const FRAC_ANY: &str = "( \".\" [0-9]{1,16} )?";
/// A fraction of zeros, or none: the number is the integer.
const FRAC_ZERO: &str = "( \".\" [0]{1,16} )?";
/// A fraction with a digit other than zero: the number is above the integer.
const FRAC_NONZERO: &str = "\".\" [0-9]{0,15} [1-9] [0-9]{0,15}";

/// A bound of a number: whole, and whether the bound itself is allowed.
pub type Bound = (i64, bool);

/// GBNF for decimal numbers (no exponent) from `min` to `max`, whose
/// bounds are whole numbers. `None` for an empty range. Zero is never
/// written `-0`.
pub fn number_range(min: Option<Bound>, max: Option<Bound>) -> Option<String> {
    let mut alts = Vec::new();
    // Zero and above, written without a sign.
    let pos_lo = match min {
        Some((l, incl)) if l >= 0 => Some((l as u64, incl)),
        _ => Some((0, true)),
    };
    let pos_hi = match max {
        None => Some(None),
        Some((h, incl)) if h >= 0 => Some(Some((h as u64, incl))),
        Some(_) => None,
    };
    if let (Some(lo), Some(hi)) = (pos_lo, pos_hi) {
        if let Some(s) = side(lo, hi) {
            alts.push(s);
        }
    }
    // Below zero: "-" and a magnitude above zero.
    if min.is_none_or(|(l, _)| l < 0) {
        let lo = match max {
            Some((h, incl)) if h < 0 => (h.unsigned_abs(), incl),
            _ => (0, false),
        };
        let hi = min.map(|(l, incl)| (l.unsigned_abs(), incl));
        if let Some(s) = side(lo, hi) {
            alts.push(format!("\"-\" ( {s} )"));
        }
    }
    (!alts.is_empty()).then(|| alts.join(" | "))
}

/// Magnitudes `w` with `lo <= w` (or `<`) and `w <= hi` (or `<`), `hi`
/// open when `None`, as an integer part and a fraction.
fn side((a, a_incl): (u64, bool), hi: Option<(u64, bool)>) -> Option<String> {
    let mut alts = Vec::new();
    let at_a = if a_incl { FRAC_ANY } else { FRAC_NONZERO };
    match hi {
        Some((b, b_incl)) if b == a => {
            if a_incl && b_incl {
                alts.push(format!("\"{a}\" {FRAC_ZERO}"));
            }
        }
        Some((b, _)) if b < a => return None,
        Some((b, b_incl)) => {
            alts.push(format!("\"{a}\" {at_a}"));
            if a + 1 < b {
                alts.push(format!("( {} ) {FRAC_ANY}", magnitudes(a + 1, b - 1)));
            }
            if b_incl {
                alts.push(format!("\"{b}\" {FRAC_ZERO}"));
            }
        }
        None => {
            alts.push(format!("\"{a}\" {at_a}"));
            if a < OPEN_LIMIT {
                alts.push(format!("( {} ) {FRAC_ANY}", magnitudes(a + 1, OPEN_LIMIT)));
            }
        }
    }
    (!alts.is_empty()).then(|| alts.join(" | "))
}

/// The spellings of the numbers from `lo` to `hi` (both >= 0, lo <= hi).
fn magnitudes(lo: u64, hi: u64) -> String {
    let mut alts = Vec::new();
    let mut start = lo;
    // Split into runs of one digit count each.
    while start <= hi {
        let digits = start.to_string().len() as u32;
        let top = if digits >= 20 { u64::MAX } else { 10u64.pow(digits) - 1 };
        let end = top.min(hi);
        same_length(&start.to_string(), &end.to_string(), &mut alts);
        if end == u64::MAX {
            break;
        }
        start = end + 1;
    }
    alts.join(" | ")
}

/// Alternatives for the numbers from `lo` to `hi`, both with the same
/// number of digits.
fn same_length(lo: &str, hi: &str, out: &mut Vec<String>) {
    out.push(same_length_expr(lo.as_bytes(), hi.as_bytes()));
}

fn same_length_expr(lo: &[u8], hi: &[u8]) -> String {
    if lo.is_empty() {
        return String::new();
    }
    if lo == hi {
        return format!("\"{}\"", std::str::from_utf8(lo).unwrap_or_default());
    }
    let (a, b) = (lo[0], hi[0]);
    let rest = lo.len() - 1;
    if a == b {
        let tail = same_length_expr(&lo[1..], &hi[1..]);
        return format!("\"{}\" ( {tail} )", a as char);
    }
    let all = |s: &[u8], d: u8| s.iter().all(|&c| c == d);
    let digits = |n: usize| {
        if n == 0 {
            String::new()
        } else if n == 1 {
            " [0-9]".to_string()
        } else {
            format!(" [0-9]{{{n}}}")
        }
    };
    let range = |x: u8, y: u8| {
        if x == y {
            format!("[{}]", x as char)
        } else {
            format!("[{}-{}]", x as char, y as char)
        }
    };
    if all(&lo[1..], b'0') && all(&hi[1..], b'9') {
        return format!("{}{}", range(a, b), digits(rest));
    }
    let mut alts = Vec::new();
    let mut first = a;
    if !all(&lo[1..], b'0') {
        let nines = vec![b'9'; rest];
        alts.push(format!("[{}] ( {} )", a as char, same_length_expr(&lo[1..], &nines)));
        first = a + 1;
    }
    let mut last = b;
    let hi_tail_full = all(&hi[1..], b'9');
    if !hi_tail_full {
        last = b - 1;
    }
    if first <= last {
        alts.push(format!("{}{}", range(first, last), digits(rest)));
    }
    if !hi_tail_full {
        let zeros = vec![b'0'; rest];
        alts.push(format!("[{}] ( {} )", b as char, same_length_expr(&zeros, &hi[1..])));
    }
    alts.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny matcher for the subset of GBNF this module writes, so the
    /// ranges can be checked exhaustively without llama.cpp.
    fn matches(expr: &str, s: &str) -> bool {
        let toks: Vec<String> = tokenize(expr);
        let mut pos = 0;
        let ends = alt(&toks, &mut pos, s.as_bytes(), 0);
        ends.contains(&s.len())
    }

    fn tokenize(e: &str) -> Vec<String> {
        let mut out = Vec::new();
        let b = e.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b' ' => i += 1,
                b'(' | b')' | b'|' => {
                    out.push((b[i] as char).to_string());
                    i += 1;
                }
                b'"' => {
                    let j = e[i + 1..].find('"').unwrap() + i + 1;
                    out.push(e[i..=j].to_string());
                    i = j + 1;
                }
                b'[' => {
                    let j = e[i..].find(']').unwrap() + i;
                    let mut t = e[i..=j].to_string();
                    i = j + 1;
                    if i < b.len() && b[i] == b'{' {
                        let k = e[i..].find('}').unwrap() + i;
                        t.push_str(&e[i..=k]);
                        i = k + 1;
                    }
                    out.push(t);
                }
                _ => panic!("unexpected {e}"),
            }
        }
        out
    }

    fn alt(t: &[String], pos: &mut usize, s: &[u8], at: usize) -> Vec<usize> {
        let mut all = Vec::new();
        loop {
            all.extend(seq(t, pos, s, at));
            if *pos < t.len() && t[*pos] == "|" {
                *pos += 1;
            } else {
                return all;
            }
        }
    }

    fn seq(t: &[String], pos: &mut usize, s: &[u8], at: usize) -> Vec<usize> {
        let mut cur = vec![at];
        while *pos < t.len() && t[*pos] != "|" && t[*pos] != ")" {
            let tok = t[*pos].clone();
            if tok == "(" {
                *pos += 1;
                let start = *pos;
                let mut next = Vec::new();
                let mut end = start;
                for &c in &cur {
                    let mut p = start;
                    next.extend(alt(t, &mut p, s, c));
                    end = p;
                }
                if cur.is_empty() {
                    let mut p = start;
                    alt(t, &mut p, s, 0);
                    end = p;
                }
                *pos = end + 1;
                cur = next;
            } else {
                *pos += 1;
                cur = cur.into_iter().flat_map(|c| atom(&tok, s, c)).collect();
            }
            cur.sort();
            cur.dedup();
        }
        cur
    }

    fn atom(tok: &str, s: &[u8], at: usize) -> Vec<usize> {
        if let Some(lit) = tok.strip_prefix('"') {
            let lit = lit.trim_end_matches('"').as_bytes();
            return if s[at..].starts_with(lit) {
                vec![at + lit.len()]
            } else {
                vec![]
            };
        }
        let close = tok.find(']').unwrap();
        let class = &tok.as_bytes()[1..close];
        let n: usize = tok[close + 1..]
            .trim_start_matches('{')
            .trim_end_matches('}')
            .parse()
            .unwrap_or(1);
        let ok = |c: u8| {
            if class.len() == 3 {
                class[0] <= c && c <= class[2]
            } else {
                class[0] == c
            }
        };
        if s.len() >= at + n && s[at..at + n].iter().all(|&c| ok(c)) {
            vec![at + n]
        } else {
            vec![]
        }
    }

    #[test]
    fn bounded_ranges_hold_exactly_their_numbers() {
        for (a, b) in [
            (0, 0),
            (0, 9),
            (3, 7),
            (5, 123),
            (10, 99),
            (17, 301),
            (-15, -3),
            (-120, 45),
            (99, 1000),
        ] {
            let g = integer_range(Some(a), Some(b)).unwrap();
            for n in -1200i64..1200 {
                let want = (a..=b).contains(&n);
                assert_eq!(matches(&g, &n.to_string()), want, "{n} in [{a},{b}]: {g}");
            }
            assert!(!matches(&g, "007"), "no leading zeros: {g}");
            assert_eq!(matches(&g, "-0"), a < 0 && b >= 0, "-0 in [{a},{b}]: {g}");
        }
    }

    #[test]
    fn open_ranges_hold_their_side_up_to_16_digits() {
        let g = integer_range(Some(7), None).unwrap();
        assert!(matches(&g, "7") && matches(&g, "9999999999999999") && !matches(&g, "6"));
        assert!(!matches(&g, "10000000000000000"));
        let g = integer_range(None, Some(-2)).unwrap();
        assert!(matches(&g, "-2") && matches(&g, "-9999") && !matches(&g, "-1") && !matches(&g, "0"));
        let g = integer_range(Some(-3), None).unwrap();
        assert!(matches(&g, "-3") && matches(&g, "-0") && matches(&g, "123456") && !matches(&g, "-4"));
        let g = integer_range(None, Some(12)).unwrap();
        assert!(matches(&g, "-123456") && matches(&g, "12") && !matches(&g, "13") && !matches(&g, "-0"));
    }

    #[test]
    fn an_empty_range_is_none() {
        assert_eq!(integer_range(Some(3), Some(2)), None);
    }
}
