//! Writing GBNF: a set of named rules, literals and character classes
//! escaped the way llama.cpp's grammar parser reads them.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The rules of one grammar, by name. `root` is the start rule.
#[derive(Debug, Default)]
pub struct Rules {
    rules: BTreeMap<String, String>,
}

impl Rules {
    /// Adds a rule and returns the name it got: `name` made safe for GBNF
    /// (letters, digits, `-`), with a number appended when another rule
    /// already holds that name with a different body.
    pub fn add(&mut self, name: &str, body: String) -> String {
        let base = rule_name(name);
        let mut candidate = base.clone();
        let mut n = 1;
        loop {
            match self.rules.get(&candidate) {
                None => {
                    self.rules.insert(candidate.clone(), body);
                    return candidate;
                }
                Some(existing) if *existing == body => return candidate,
                Some(_) => {
                    candidate = format!("{base}{n}");
                    n += 1;
                }
            }
        }
    }

    /// Reserves `name` (for a rule whose body comes later, e.g. a recursive
    /// `$ref`), returning the name it got.
    pub fn reserve(&mut self, name: &str) -> String {
        let base = rule_name(name);
        let mut candidate = base.clone();
        let mut n = 1;
        while self.rules.contains_key(&candidate) {
            candidate = format!("{base}{n}");
            n += 1;
        }
        self.rules.insert(candidate.clone(), String::new());
        candidate
    }

    /// Sets the body of a reserved rule.
    pub fn define(&mut self, name: &str, body: String) {
        self.rules.insert(name.to_owned(), body);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.rules.contains_key(name)
    }

    /// The grammar text: `root` first, then the other rules by name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(root) = self.rules.get("root") {
            let _ = writeln!(out, "root ::= {root}");
        }
        for (name, body) in self.rules.iter().filter(|(n, _)| *n != "root") {
            let _ = writeln!(out, "{name} ::= {body}");
        }
        out
    }
}

/// A GBNF rule name for `s`: runs of other characters become one `-`.
pub fn rule_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut dash = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// A GBNF string literal matching exactly `s`.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One character inside a GBNF `[...]` class.
pub fn class_char(c: char) -> String {
    match c {
        ']' | '\\' | '-' | '[' | '"' => format!("\\{c}"),
        // llama.cpp reads no `\^`; a hex escape is never taken for negation.
        '^' => "\\x5E".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if (c as u32) < 0x20 || c == '\x7f' => format!("\\x{:02X}", c as u32),
        c => c.to_string(),
    }
}

/// A character class of inclusive ranges, negated when `negated`.
pub fn class(ranges: &[(char, char)], negated: bool) -> String {
    let mut out = String::from("[");
    if negated {
        out.push('^');
    }
    for &(a, b) in ranges {
        out.push_str(&class_char(a));
        if b != a {
            out.push('-');
            out.push_str(&class_char(b));
        }
    }
    out.push(']');
    out
}

/// `item` repeated `min` to `max` times (`None`: no upper bound).
pub fn repeat(item: &str, min: u64, max: Option<u64>) -> String {
    match (min, max) {
        (_, Some(0)) => String::new(),
        (0, Some(1)) => format!("{item}?"),
        (0, None) => format!("{item}*"),
        (1, None) => format!("{item}+"),
        (m, None) => format!("{item}{{{m},}}"),
        (m, Some(n)) if m == n => format!("{item}{{{m}}}"),
        (m, Some(n)) => format!("{item}{{{m},{n}}}"),
    }
}

/// `item` repeated `min` to `max` times with `sep` between two items.
pub fn repeat_separated(item: &str, sep: &str, min: u64, max: Option<u64>) -> String {
    if max == Some(0) {
        return String::new();
    }
    if min == 0 && max == Some(1) {
        return format!("{item}?");
    }
    let rest = repeat(&format!("( {sep} {item} )"), min.saturating_sub(1), max.map(|n| n - 1));
    let seq = if rest.is_empty() {
        item.to_owned()
    } else {
        format!("{item} {rest}")
    };
    if min == 0 {
        format!("( {seq} )?")
    } else {
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_backslashes_and_controls() {
        assert_eq!(literal(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(literal("x\ny\u{1}"), r#""x\ny\x01""#);
        assert_eq!(literal("é"), "\"é\"");
    }

    #[test]
    fn rule_names_keep_letters_digits_and_single_dashes() {
        assert_eq!(rule_name("root-first name"), "root-first-name");
        assert_eq!(rule_name("ref-/$defs/a_b"), "ref-defs-a-b");
    }

    #[test]
    fn a_name_taken_by_another_body_gets_a_number() {
        let mut r = Rules::default();
        assert_eq!(r.add("a", "\"x\"".into()), "a");
        assert_eq!(r.add("a", "\"x\"".into()), "a");
        assert_eq!(r.add("a", "\"y\"".into()), "a1");
    }

    #[test]
    fn repetitions() {
        assert_eq!(repeat("x", 0, Some(1)), "x?");
        assert_eq!(repeat("x", 2, None), "x{2,}");
        assert_eq!(repeat("x", 2, Some(2)), "x{2}");
        assert_eq!(repeat_separated("x", "\",\"", 0, None), "( x ( \",\" x )* )?");
        assert_eq!(repeat_separated("x", "\",\"", 1, Some(1)), "x");
        assert_eq!(repeat_separated("x", "\",\"", 2, Some(3)), "x ( \",\" x ){1,2}");
    }
}
