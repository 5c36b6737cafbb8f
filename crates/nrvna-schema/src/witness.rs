//! The shortest text a GBNF grammar of this crate accepts, or `None` when
//! it accepts none (a rule that can only ever call itself, such as a
//! required property whose schema is the object itself).
//!
//! The checker uses it twice: a grammar with no text means the schema
//! allows no finite value, and a text the schema then refuses means the
//! schema's constraints contradict each other (a `const` of another
//! `type`, say) in a way the grammar cannot express. Either way a job
//! would run to its token limit and fail, so the schema is refused first.
//!
//! It reads the GBNF this crate writes (see [`crate::gbnf`]): rules
//! `name ::= body`, alternatives `|`, groups `( )`, string literals,
//! character classes, rule names and the repetitions `?`, `*`, `+`,
//! `{m}`, `{m,}`, `{m,n}`.

use std::collections::HashMap;

/// A parsed rule body.
#[derive(Debug)]
enum Expr {
    /// Alternatives, each a sequence of items with their least repetition.
    Alt(Vec<Vec<(Atom, u64)>>),
}

#[derive(Debug)]
enum Atom {
    Text(String),
    /// One character: the first of the class (or, negated, one outside it).
    Char(Option<char>),
    Rule(String),
    Group(Box<Expr>),
}

/// The shortest text `grammar` (start rule `root`) accepts; `Err` when the
/// grammar cannot be read, `Ok(None)` when it accepts nothing.
pub fn shortest(grammar: &str) -> Result<Option<String>, String> {
    let mut rules = HashMap::new();
    for line in grammar.lines().filter(|l| !l.trim().is_empty()) {
        let (name, body) = line
            .split_once(" ::= ")
            .ok_or_else(|| format!("not a rule: {line:?}"))?;
        let mut p = Parser {
            s: body.chars().collect(),
            i: 0,
        };
        let e = p.alt()?;
        if p.i != p.s.len() {
            return Err(format!("rule {name}: unexpected {:?}", p.s[p.i]));
        }
        rules.insert(name.trim().to_owned(), e);
    }
    if !rules.contains_key("root") {
        return Err("the grammar has no root rule".into());
    }
    // Shortest texts only get shorter, one rule's knowledge at a time:
    // as many rounds as there are rules settles every one of them.
    let mut best: HashMap<&str, String> = HashMap::new();
    for _ in 0..=rules.len() {
        let mut changed = false;
        for (name, e) in &rules {
            if let Some(t) = text(e, &best) {
                if best
                    .get(name.as_str())
                    .is_none_or(|b| t.chars().count() < b.chars().count())
                {
                    best.insert(name, t);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok(best.remove("root"))
}

fn text(e: &Expr, best: &HashMap<&str, String>) -> Option<String> {
    let Expr::Alt(alts) = e;
    alts.iter()
        .filter_map(|seq| {
            let mut out = String::new();
            for (atom, min) in seq {
                if *min == 0 {
                    continue;
                }
                let one = match atom {
                    Atom::Text(s) => s.clone(),
                    Atom::Char(c) => (*c)?.to_string(),
                    Atom::Rule(r) => best.get(r.as_str())?.clone(),
                    Atom::Group(g) => text(g, best)?,
                };
                out.push_str(&one.repeat(usize::try_from(*min).ok()?));
            }
            Some(out)
        })
        .min_by_key(|s| s.chars().count())
}

struct Parser {
    s: Vec<char>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }

    fn alt(&mut self) -> Result<Expr, String> {
        let mut alts = vec![self.seq()?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.seq()?);
        }
        Ok(Expr::Alt(alts))
    }

    fn seq(&mut self) -> Result<Vec<(Atom, u64)>, String> {
        let mut items = Vec::new();
        loop {
            self.skip_space();
            let atom = match self.peek() {
                None | Some('|') | Some(')') => return Ok(items),
                Some('"') => Atom::Text(self.literal()?),
                Some('[') => Atom::Char(self.class()?),
                Some('(') => {
                    self.i += 1;
                    let g = self.alt()?;
                    self.skip_space();
                    if self.peek() != Some(')') {
                        return Err("a group is not closed".into());
                    }
                    self.i += 1;
                    Atom::Group(Box::new(g))
                }
                Some('.') => {
                    self.i += 1;
                    Atom::Char(Some('a'))
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '-' => {
                    let start = self.i;
                    while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
                        self.i += 1;
                    }
                    Atom::Rule(self.s[start..self.i].iter().collect())
                }
                Some(c) => return Err(format!("unexpected {c:?}")),
            };
            let min = self.least_repeat()?;
            items.push((atom, min));
        }
    }

    /// The least count of the repetition after an item (1 without one).
    fn least_repeat(&mut self) -> Result<u64, String> {
        match self.peek() {
            Some('?') | Some('*') => {
                self.i += 1;
                Ok(0)
            }
            Some('+') => {
                self.i += 1;
                Ok(1)
            }
            Some('{') => {
                let start = self.i + 1;
                while self.peek().is_some_and(|c| c != '}') {
                    self.i += 1;
                }
                let inner: String = self.s[start..self.i].iter().collect();
                self.i += 1;
                inner
                    .split(',')
                    .next()
                    .and_then(|m| m.trim().parse().ok())
                    .ok_or_else(|| format!("bad repetition {{{inner}}}"))
            }
            _ => Ok(1),
        }
    }

    /// One escaped character after a backslash.
    fn escape(&mut self) -> Result<char, String> {
        let c = self.peek().ok_or("a backslash ends the rule")?;
        self.i += 1;
        Ok(match c {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'x' => {
                let hex: String = self
                    .s
                    .get(self.i..self.i + 2)
                    .ok_or("a short \\x escape")?
                    .iter()
                    .collect();
                self.i += 2;
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape \\x{hex}"))?
            }
            other => other,
        })
    }

    fn literal(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("a string literal is not closed".into()),
                Some('"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.i += 1;
                    out.push(self.escape()?);
                }
                Some(c) => {
                    self.i += 1;
                    out.push(c);
                }
            }
        }
    }

    /// A class's witness character: its first member, or for a negated
    /// class the first of some ordinary characters it does not exclude.
    fn class(&mut self) -> Result<Option<char>, String> {
        self.i += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.i += 1;
        }
        let mut ranges = Vec::new();
        loop {
            let a = match self.peek() {
                None => return Err("a character class is not closed".into()),
                Some(']') => {
                    self.i += 1;
                    break;
                }
                Some('\\') => {
                    self.i += 1;
                    self.escape()?
                }
                Some(c) => {
                    self.i += 1;
                    c
                }
            };
            let b = if self.peek() == Some('-') && self.s.get(self.i + 1) != Some(&']') {
                self.i += 1;
                match self.peek() {
                    Some('\\') => {
                        self.i += 1;
                        self.escape()?
                    }
                    Some(c) => {
                        self.i += 1;
                        c
                    }
                    None => return Err("a character class is not closed".into()),
                }
            } else {
                a
            };
            ranges.push((a, b));
        }
        let inside = |c: char| ranges.iter().any(|&(a, b)| a <= c && c <= b);
        Ok(if negated {
            "a0 xZ_.".chars().find(|&c| !inside(c))
        } else {
            ranges.first().map(|&(a, _)| a)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::shortest;

    #[test]
    fn picks_the_shortest_alternative_and_the_least_repetition() {
        let g = "root ::= \"ab\" | x\nx ::= [c-e]{2,5} \"!\"? y*\ny ::= \"q\"\n";
        assert_eq!(shortest(g).unwrap().as_deref(), Some("ab"));
        let g = "root ::= \"{\" s \"\\\"k\\\"\" s \"}\"\ns ::= ( \" \" | \"\\n\"{1,2} [ \\t]{0,20} )?\n";
        assert_eq!(shortest(g).unwrap().as_deref(), Some("{\"k\"}"));
        // A negated class gives a character it does not exclude.
        assert_eq!(shortest("root ::= [^a0]\n").unwrap().as_deref(), Some(" "));
        assert_eq!(shortest("root ::= [\\x5E\\-]+\n").unwrap().as_deref(), Some("^"));
    }

    #[test]
    fn a_rule_that_only_calls_itself_accepts_nothing() {
        let g = "root ::= \"{\" a \"}\"\na ::= \"[\" a \"]\"\n";
        assert_eq!(shortest(g).unwrap(), None);
        // ...unless another alternative ends it.
        let g = "root ::= \"{\" a \"}\"\na ::= \"[\" a \"]\" | \"0\"\n";
        assert_eq!(shortest(g).unwrap().as_deref(), Some("{0}"));
    }
}
