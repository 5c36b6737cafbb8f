//! The text side of OuteTTS: normalising what to say into the words the
//! model voices one by one, the speaker profile, and the prompt.
//!
//! OuteTTS 0.2 separates words with `<|text_sep|>` and wraps each word's
//! audio codes in `<|code_start|>`..`<|code_end|>`; OuteTTS 0.3 separates
//! words with `<|space|>`, ends each word's codes with `<|space|>` and
//! voices punctuation as tokens of its own (`<|period|>`, `<|comma|>`, ...).
//! The layout is the one llama.cpp's tts example and the C++ nrvna use.

use serde::Deserialize;

use crate::error::SpeakerError;

/// The OuteTTS prompt layout of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V02,
    V03,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V02 => "0.2",
            Version::V03 => "0.3",
        }
    }

    /// Between two words of the text section.
    pub fn text_sep(self) -> &'static str {
        match self {
            Version::V02 => "<|text_sep|>",
            Version::V03 => "<|space|>",
        }
    }

    /// Before a word's audio codes (0.3 has none).
    pub fn code_open(self) -> Option<&'static str> {
        match self {
            Version::V02 => Some("<|code_start|>"),
            Version::V03 => None,
        }
    }

    /// After a word's audio codes.
    pub fn code_close(self) -> &'static str {
        match self {
            Version::V02 => "<|code_end|>",
            Version::V03 => "<|space|>",
        }
    }
}

/// A voice: words with their durations and audio codes, which the prompt
/// shows the model before the words it is to say (OuteTTS's speaker JSON:
/// `{"text": ..., "words": [{"word", "duration", "codes"}]}`).
#[derive(Clone, Debug, Deserialize)]
pub struct Speaker {
    pub words: Vec<SpeakerWord>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SpeakerWord {
    pub word: String,
    pub duration: f32,
    pub codes: Vec<u32>,
}

/// OuteTTS's default English voice `en_male_1`, the one llama.cpp's tts
/// example and the C++ nrvna speak with.
const DEFAULT_SPEAKER: &str = include_str!("../../../data/outetts-speaker-en-male-1.json");

impl Speaker {
    pub fn default_voice() -> Speaker {
        Speaker::parse(DEFAULT_SPEAKER).expect("the built-in speaker profile parses")
    }

    /// Parses an OuteTTS speaker profile (JSON).
    pub fn parse(json: &str) -> Result<Speaker, SpeakerError> {
        let s: Speaker = serde_json::from_str(json).map_err(|source| SpeakerError::Json { source })?;
        if s.words.is_empty() || s.words.iter().any(|w| w.codes.is_empty() || w.word.is_empty()) {
            return Err(SpeakerError::Empty);
        }
        Ok(s)
    }

    /// The largest audio code the profile uses.
    pub fn max_code(&self) -> u32 {
        self.words
            .iter()
            .flat_map(|w| w.codes.iter().copied())
            .max()
            .unwrap_or(0)
    }
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

fn below_thousand(n: u64, out: &mut Vec<String>) {
    if n >= 100 {
        out.push(ONES[(n / 100) as usize].into());
        out.push("hundred".into());
    }
    let r = n % 100;
    if r >= 20 {
        let mut w = TENS[(r / 10) as usize].to_owned();
        if r % 10 > 0 {
            w.push('-');
            w.push_str(ONES[(r % 10) as usize]);
        }
        out.push(w);
    } else if r > 0 {
        out.push(ONES[r as usize].into());
    }
}

/// A number as English words: "42.5" -> "forty-two point five".
pub fn number_words(num: &str) -> String {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let mut out = Vec::new();
    match int.parse::<u64>() {
        Ok(0) => out.push("zero".to_owned()),
        Ok(mut n) if n < 1_000_000_000_000 => {
            for (scale, name) in [(1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand")] {
                if n >= scale {
                    below_thousand(n / scale, &mut out);
                    out.push(name.into());
                    n %= scale;
                }
            }
            below_thousand(n, &mut out);
        }
        // Too long to read as a number: read it digit by digit.
        _ => out.extend(
            int.chars()
                .filter_map(|c| c.to_digit(10))
                .map(|d| ONES[d as usize].to_owned()),
        ),
    }
    if let Some(f) = frac {
        out.push("point".into());
        out.extend(
            f.chars()
                .filter_map(|c| c.to_digit(10))
                .map(|d| ONES[d as usize].to_owned()),
        );
    }
    out.join(" ")
}

/// Replaces each number (digits, optionally one decimal part) with words.
fn spell_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let num: String = chars[start..i].iter().collect();
            out.push(' ');
            out.push_str(&number_words(&num));
            out.push(' ');
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The words to voice, as the model's prompt spells them. 0.2: lower-case
/// ASCII letters only (numbers spelled out, punctuation a word break).
/// 0.3: also non-ASCII letters, and `. , ? !` as tokens on the word before.
pub fn words(text: &str, version: Version) -> Vec<String> {
    let lower = spell_numbers(text).to_lowercase();
    match version {
        Version::V02 => lower
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c
                } else if c.is_whitespace() || "-_/,.\\".contains(c) {
                    ' '
                } else {
                    '\u{0}'
                }
            })
            .filter(|&c| c != '\u{0}')
            .collect::<String>()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Version::V03 => {
            let mut out: Vec<String> = Vec::new();
            let mut cur = String::new();
            for c in lower.chars() {
                let mark = match c {
                    '.' => Some("<|period|>"),
                    ',' => Some("<|comma|>"),
                    '?' => Some("<|question_mark|>"),
                    '!' => Some("<|exclamation_mark|>"),
                    _ => None,
                };
                if let Some(m) = mark {
                    // Punctuation belongs to the word before it.
                    if cur.is_empty() {
                        if let Some(last) = out.last_mut() {
                            last.push_str(m);
                        }
                    } else {
                        cur.push_str(m);
                    }
                } else if c.is_whitespace() {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                } else if c.is_ascii_lowercase() || c.is_ascii_digit() || (!c.is_ascii() && c.is_alphanumeric()) {
                    cur.push(c);
                }
            }
            if !cur.is_empty() {
                out.push(cur);
            }
            out
        }
    }
}

/// One word of the speaker's audio section, as the prompt shows it.
fn speaker_line(w: &SpeakerWord, version: Version) -> String {
    let mut s = format!("{}<|t_{:.2}|>", w.word, w.duration);
    if let Some(open) = version.code_open() {
        s.push_str(open);
    }
    for c in &w.codes {
        s.push_str(&format!("<|{c}|>"));
    }
    s.push_str(version.code_close());
    s.push('\n');
    s
}

/// The prompt for voicing `words` in `speaker`'s voice: the speaker's words
/// and then ours in the text section, then the speaker's audio, ending
/// where the model voices our first word.
pub fn prompt(version: Version, speaker: &Speaker, words: &[String]) -> String {
    let text: Vec<&str> = speaker
        .words
        .iter()
        .map(|w| w.word.as_str())
        .chain(words.iter().map(String::as_str))
        .collect();
    let mut p = String::from("<|im_start|>\n<|text_start|>");
    p.push_str(&text.join(version.text_sep()));
    p.push_str("<|text_end|>\n<|audio_start|>\n");
    for w in &speaker.words {
        p.push_str(&speaker_line(w, version));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_spelled_out() {
        assert_eq!(number_words("0"), "zero");
        assert_eq!(number_words("7"), "seven");
        assert_eq!(number_words("42"), "forty-two");
        assert_eq!(number_words("100"), "one hundred");
        assert_eq!(number_words("1905"), "one thousand nine hundred five");
        assert_eq!(number_words("2000000"), "two million");
        assert_eq!(number_words("3.14"), "three point one four");
    }

    #[test]
    fn v02_words_are_lowercase_letters_with_punctuation_as_breaks() {
        assert_eq!(
            words("Hello, World! It's 42 degrees/outside.", Version::V02),
            ["hello", "world", "its", "forty", "two", "degrees", "outside"]
        );
        assert!(words("  ...  ", Version::V02).is_empty());
    }

    #[test]
    fn v03_words_keep_punctuation_tokens_and_non_ascii_letters() {
        assert_eq!(
            words("Hello, wörld. Ready?", Version::V03),
            ["hello<|comma|>", "wörld<|period|>", "ready<|question_mark|>"]
        );
        assert_eq!(words("wait !", Version::V03), ["wait<|exclamation_mark|>"]);
    }

    #[test]
    fn the_default_speaker_parses() {
        let s = Speaker::default_voice();
        assert_eq!(s.words.len(), 30);
        assert_eq!(s.words[0].word, "the");
        assert_eq!(s.words[0].codes[0], 257);
        assert!(s.max_code() < 4096);
    }

    #[test]
    fn prompts_follow_each_versions_layout() {
        let sp = Speaker {
            words: vec![SpeakerWord {
                word: "hi".into(),
                duration: 0.08,
                codes: vec![1, 22],
            }],
        };
        let w = vec!["good".to_owned(), "day".to_owned()];
        assert_eq!(
            prompt(Version::V02, &sp, &w),
            "<|im_start|>\n<|text_start|>hi<|text_sep|>good<|text_sep|>day<|text_end|>\n<|audio_start|>\n\
             hi<|t_0.08|><|code_start|><|1|><|22|><|code_end|>\n"
        );
        assert_eq!(
            prompt(Version::V03, &sp, &w),
            "<|im_start|>\n<|text_start|>hi<|space|>good<|space|>day<|text_end|>\n<|audio_start|>\n\
             hi<|t_0.08|><|1|><|22|><|space|>\n"
        );
    }

    #[test]
    fn a_speaker_profile_is_checked() {
        assert!(Speaker::parse("{\"words\": []}").is_err());
        assert!(Speaker::parse("[1]")
            .unwrap_err()
            .to_string()
            .contains("speaker profile"));
        let s = Speaker::parse("{\"text\":\"a\",\"words\":[{\"word\":\"a\",\"duration\":0.1,\"codes\":[5]}]}").unwrap();
        assert_eq!(s.max_code(), 5);
    }
}
