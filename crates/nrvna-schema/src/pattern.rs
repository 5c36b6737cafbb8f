//! A string's `pattern` (an ECMA-262 regular expression) as GBNF.
//!
//! The grammar matches a whole string, so the pattern must be anchored
//! (`^...$`). The subset is llama.cpp's: literals, `.`, classes, groups,
//! alternation and the quantifiers `* + ? {m} {m,} {m,n}`, plus `\d` and
//! `\w`. Anything else (lookaround, backreferences, `\s`, `\b`, inner
//! anchors) is refused with the reason, never silently widened.

use crate::gbnf::{class, literal, repeat};

/// A parsed regular expression.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(char),
    /// Ranges of a class, and whether it is negated.
    Class(Vec<(char, char)>, bool),
    /// `.`: any character but a line break.
    Dot,
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u64, Option<u64>),
}

/// The GBNF of a string rule for `pattern` (the quotes included), or why
/// the pattern cannot be expressed.
pub fn pattern_rule(pattern: &str) -> Result<String, String> {
    let inner = pattern
        .strip_prefix('^')
        .and_then(|p| {
            p.strip_suffix('$')
                .filter(|_| !p.ends_with("\\$") || p.ends_with("\\\\$"))
        })
        .ok_or_else(|| {
            "it is not anchored as ^...$ (a grammar matches the whole string; anchor it, e.g. ^[a-z]+$)".to_string()
        })?;
    let chars: Vec<char> = inner.chars().collect();
    let mut p = Parser { s: &chars, i: 0 };
    let node = p.alternation()?;
    if p.i < chars.len() {
        return Err(format!("unbalanced ')' at offset {}", p.i + 1));
    }
    Ok(format!("\"\\\"\" ( {} ) \"\\\"\"", emit(&node)))
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn alternation(&mut self) -> Result<Node, String> {
        let mut alts = vec![self.sequence()?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.sequence()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Node::Seq(vec![]))
        } else {
            Node::Alt(alts)
        })
    }

    fn sequence(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(Node::Seq(items))
    }

    fn quantified(&mut self, mut atom: Node) -> Result<Node, String> {
        loop {
            let (min, max) = match self.peek() {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                Some('{') => {
                    let (min, max, len) = self.braces()?;
                    self.i += len - 1;
                    (min, max)
                }
                _ => return Ok(atom),
            };
            self.i += 1;
            // A lazy quantifier matches the same strings.
            if self.peek() == Some('?') {
                self.i += 1;
            }
            if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
                return Err(format!("a quantifier follows a quantifier at offset {}", self.i + 1));
            }
            atom = Node::Repeat(Box::new(atom), min, max);
        }
    }

    /// `{m}`, `{m,}` or `{m,n}` at the current position: (min, max, length).
    fn braces(&self) -> Result<(u64, Option<u64>, usize), String> {
        let rest: String = self.s[self.i..].iter().collect();
        let close = rest
            .find('}')
            .ok_or_else(|| format!("'{{' at offset {} is not closed", self.i + 1))?;
        let body = &rest[1..close];
        let num = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|&n| n <= 10_000)
                .ok_or_else(|| format!("{{{body}}} is not a repetition count from 0 to 10000"))
        };
        let (min, max) = match body.split_once(',') {
            None => {
                let n = num(body)?;
                (n, Some(n))
            }
            Some((a, "")) => (num(a)?, None),
            Some((a, b)) => (num(a)?, Some(num(b)?)),
        };
        if max.is_some_and(|m| m < min) {
            return Err(format!("{{{body}}} has its maximum below its minimum"));
        }
        Ok((min, max, rest[..=close].chars().count()))
    }

    fn atom(&mut self) -> Result<Node, String> {
        let at = self.i + 1;
        let c = self.peek().ok_or("the pattern ends early")?;
        self.i += 1;
        match c {
            '(' => {
                if self.peek() == Some('?') {
                    if self.s.get(self.i + 1) == Some(&':') {
                        self.i += 2;
                    } else {
                        return Err(format!(
                            "the group at offset {at} is a lookaround or a named group, which a grammar cannot express"
                        ));
                    }
                }
                let inner = self.alternation()?;
                if self.peek() != Some(')') {
                    return Err(format!("the group at offset {at} is not closed"));
                }
                self.i += 1;
                Ok(inner)
            }
            '[' => self.class(),
            '.' => Ok(Node::Dot),
            '^' | '$' => Err(format!("the anchor '{c}' at offset {at} is inside the pattern")),
            '*' | '+' | '?' | '{' => Err(format!("'{c}' at offset {at} has nothing to repeat")),
            ')' => Err(format!("unbalanced ')' at offset {at}")),
            '\\' => self.escape(false).map(|e| match e {
                Escaped::Char(c) => Node::Lit(c),
                Escaped::Set(ranges, neg) => Node::Class(ranges, neg),
            }),
            c => Ok(Node::Lit(c)),
        }
    }

    fn class(&mut self) -> Result<Node, String> {
        let at = self.i;
        let negated = self.peek() == Some('^');
        if negated {
            self.i += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self
                .peek()
                .ok_or_else(|| format!("the class at offset {at} is not closed"))?;
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            let lo = self.class_atom()?;
            let Escaped::Char(lo) = lo else {
                let Escaped::Set(set, false) = lo else {
                    return Err(format!("a negated escape (\\D, \\W) inside the class at offset {at}"));
                };
                ranges.extend(set);
                continue;
            };
            if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|&n| n != ']') {
                self.i += 1;
                let Escaped::Char(hi) = self.class_atom()? else {
                    return Err(format!("a range in the class at offset {at} ends in a class escape"));
                };
                if hi < lo {
                    return Err(format!(
                        "the range {lo}-{hi} in the class at offset {at} is out of order"
                    ));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        if ranges.is_empty() {
            return Err(format!("the class at offset {at} is empty"));
        }
        Ok(Node::Class(ranges, negated))
    }

    fn class_atom(&mut self) -> Result<Escaped, String> {
        let c = self.peek().ok_or("the pattern ends early")?;
        self.i += 1;
        if c == '\\' {
            self.escape(true)
        } else {
            Ok(Escaped::Char(c))
        }
    }

    /// After a backslash.
    fn escape(&mut self, in_class: bool) -> Result<Escaped, String> {
        let at = self.i;
        let c = self.peek().ok_or("the pattern ends in a backslash")?;
        self.i += 1;
        let hex = |p: &mut Self, n: usize| -> Result<char, String> {
            let digits: String = p.s.get(p.i..p.i + n).unwrap_or_default().iter().collect();
            let v = u32::from_str_radix(&digits, 16)
                .ok()
                .filter(|_| digits.len() == n)
                .and_then(char::from_u32)
                .ok_or_else(|| format!("\\{c} at offset {at} needs {n} hex digits"))?;
            p.i += n;
            Ok(v)
        };
        Ok(match c {
            'd' => Escaped::Set(vec![('0', '9')], false),
            'D' if !in_class => Escaped::Set(vec![('0', '9')], true),
            'w' => Escaped::Set(WORD.to_vec(), false),
            'W' if !in_class => Escaped::Set(WORD.to_vec(), true),
            'n' => Escaped::Char('\n'),
            'r' => Escaped::Char('\r'),
            't' => Escaped::Char('\t'),
            'x' => Escaped::Char(hex(self, 2)?),
            'u' => Escaped::Char(hex(self, 4)?),
            c if "\\^$.|?*+()[]{}/-\"".contains(c) => Escaped::Char(c),
            's' | 'S' => {
                return Err(format!(
                    "\\{c} at offset {at} is not supported (its whitespace includes characters a JSON string must escape); list the characters, e.g. [ ]"
                ))
            }
            'b' | 'B' => return Err(format!("the word boundary \\{c} at offset {at} cannot be expressed by a grammar")),
            '1'..='9' => return Err(format!("the backreference \\{c} at offset {at} cannot be expressed by a grammar")),
            c => return Err(format!("the escape \\{c} at offset {at} is not supported")),
        })
    }
}

const WORD: [(char, char); 4] = [('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];

enum Escaped {
    Char(char),
    Set(Vec<(char, char)>, bool),
}

fn emit(n: &Node) -> String {
    match n {
        Node::Lit(c) => literal(&c.to_string()),
        Node::Class(r, neg) => class(r, *neg),
        Node::Dot => "[^\\n\\r]".to_string(),
        Node::Seq(items) if items.is_empty() => "\"\"".to_string(),
        Node::Seq(items) => {
            // Consecutive literals become one.
            let mut parts: Vec<String> = Vec::new();
            let mut lit = String::new();
            for it in items {
                if let Node::Lit(c) = it {
                    lit.push(*c);
                    continue;
                }
                if !lit.is_empty() {
                    parts.push(literal(&std::mem::take(&mut lit)));
                }
                parts.push(emit_grouped(it));
            }
            if !lit.is_empty() {
                parts.push(literal(&lit));
            }
            parts.join(" ")
        }
        Node::Alt(alts) => alts.iter().map(emit).collect::<Vec<_>>().join(" | "),
        Node::Repeat(inner, min, max) => {
            let item = match **inner {
                Node::Lit(_) | Node::Class(..) | Node::Dot => emit(inner),
                _ => format!("( {} )", emit(inner)),
            };
            let r = repeat(&item, *min, *max);
            if r.is_empty() {
                "\"\"".to_string()
            } else {
                r
            }
        }
    }
}

fn emit_grouped(n: &Node) -> String {
    match n {
        Node::Alt(_) | Node::Seq(_) => format!("( {} )", emit(n)),
        _ => emit(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_supported_subset() {
        assert_eq!(pattern_rule("^abc$").unwrap(), r#""\"" ( "abc" ) "\"""#);
        assert_eq!(
            pattern_rule(r"^[A-Z]{2}\d{3,}(?:-x)?$").unwrap(),
            r#""\"" ( [A-Z]{2} [0-9]{3,} ( "-x" )? ) "\"""#
        );
        assert_eq!(
            pattern_rule("^(a|bc)+.$").unwrap(),
            r#""\"" ( ( "a" | "bc" )+ [^\n\r] ) "\"""#
        );
        assert_eq!(pattern_rule(r"^[^\]^-]$").unwrap(), r#""\"" ( [^\]\x5E\-] ) "\"""#);
        assert_eq!(pattern_rule(r"^a\.b\u00e9$").unwrap(), r#""\"" ( "a.bé" ) "\"""#);
        assert_eq!(pattern_rule(r"^x*?$").unwrap(), r#""\"" ( "x"* ) "\"""#);
    }

    #[test]
    fn refuses_what_a_grammar_cannot_express_with_the_reason() {
        for (p, why) in [
            ("[a-z]+", "anchored"),
            ("^a(?=b)$", "lookaround"),
            (r"^(a)\1$", "backreference"),
            (r"^a\sb$", "\\s"),
            (r"^\bword$", "boundary"),
            ("^a^b$", "anchor"),
            ("^a{3,2}$", "maximum below"),
            ("^(ab$", "not closed"),
            ("^[ab$", "not closed"),
            ("^*a$", "nothing to repeat"),
            ("^a**$", "quantifier follows"),
        ] {
            let e = pattern_rule(p).expect_err(p);
            assert!(e.contains(why), "{p}: {e}");
        }
    }
}
