//! Where the prompt comes from: the PROMPT words, or stdin (`-`, or no
//! words with stdin not a terminal). Stdin is read with a size cap so a
//! runaway pipe cannot fill memory, must be UTF-8, and loses one trailing
//! newline (what `echo` and heredocs add).

use std::io::{IsTerminal, Read};

use anyhow::{bail, Context, Result};

/// Reads the prompt from the words or stdin, as the command line asks.
pub fn from_args_or_stdin(words: &[String], limit: u64) -> Result<String> {
    match words {
        [one] if one == "-" => read_stdin(limit),
        [] => {
            if std::io::stdin().is_terminal() {
                bail!("no prompt given; give the prompt as arguments (wrk WS 'your prompt'), or pipe it on stdin");
            }
            read_stdin(limit)
        }
        words => {
            if words.iter().any(|w| w == "-") {
                bail!("`-` (read the prompt from stdin) must be the only PROMPT argument");
            }
            Ok(words.join(" "))
        }
    }
}

/// Reads all of stdin (at most `limit` bytes of prompt), strips one
/// trailing newline and checks that it is UTF-8.
pub fn read_stdin(limit: u64) -> Result<String> {
    let mut buf = Vec::new();
    // Two more bytes for a trailing \r\n, one more to detect "too large".
    std::io::stdin()
        .lock()
        .take(limit + 3)
        .read_to_end(&mut buf)
        .context("reading the prompt from stdin")?;
    strip_one_newline(&mut buf);
    if buf.len() as u64 > limit {
        bail!("the prompt on stdin is over the limit of {limit} bytes (raise NRVNA_MAX_PROMPT_SIZE to allow it)");
    }
    String::from_utf8(buf).map_err(|e| {
        anyhow::anyhow!(
            "the prompt on stdin is not valid UTF-8 (bad byte at offset {}); convert it first, e.g. with iconv",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Removes one trailing `\n` or `\r\n`.
pub fn strip_one_newline(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_exactly_one_newline() {
        for (input, want) in [
            (&b"hi\n"[..], &b"hi"[..]),
            (b"hi\r\n", b"hi"),
            (b"hi\n\n", b"hi\n"),
            (b"hi", b"hi"),
            (b"hi\r", b"hi\r"),
            (b"\n", b""),
        ] {
            let mut v = input.to_vec();
            strip_one_newline(&mut v);
            assert_eq!(v, want, "{input:?}");
        }
    }

    #[test]
    fn words_are_joined_by_single_spaces() {
        let w = vec!["a".to_string(), "b  c".to_string()];
        assert_eq!(from_args_or_stdin(&w, 100).unwrap(), "a b  c");
    }
}
