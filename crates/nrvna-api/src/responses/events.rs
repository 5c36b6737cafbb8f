//! A response's stream events (OpenAI's Responses event types, each with
//! its `sequence_number`) as a pure function of durable state: the record
//! and the job's outcome (partial.txt while it runs, result.txt once done).
//! Whoever renders event N, whenever, renders the same event, so a client
//! resumes a stream with `starting_after` from any gateway, also after a
//! restart.
//!
//! The text is cut into deltas by one rule that does not depend on when
//! partial.txt was read: a delta is a word with the blanks after it, sent
//! once the character after those blanks exists (or the job has ended).
//! Those deltas of a longer text begin with the deltas of any of its
//! prefixes, and the deltas of the result join to exactly the result.

use std::borrow::Cow;

use serde_json::{json, Value};

use super::object::{message, message_id, object, output_text, Outcome, Status};
use super::record::Record;

/// One event: its type and its data (with `type` and `sequence_number`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub data: Value,
}

/// The longest prefix of `bytes` that is valid UTF-8 (a character cut by
/// the end of partial.txt waits for its other bytes).
pub fn valid_utf8(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// The text of raw model output that the result will show: closed
/// `<think>` blocks removed (and the blanks before the answer, as the
/// daemon does), and nothing from an open `<think>` on (it may still
/// close and vanish).
pub fn visible(raw: &str) -> Cow<'_, str> {
    if !raw.contains("<think>") {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut stripped = false;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => {
                rest = &rest[start + end + "</think>".len()..];
                stripped = true;
            }
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    if stripped {
        Cow::Owned(out.trim_start().to_owned())
    } else {
        Cow::Owned(out)
    }
}

/// The deltas of `text`: it is cut before every character that is not
/// whitespace and follows whitespace. The last piece is a delta only when
/// `done` (the text is final); until then more may belong to it.
pub fn deltas(text: &str, done: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut blank_before = false;
    for (i, c) in text.char_indices() {
        let blank = c.is_whitespace();
        if blank_before && !blank {
            out.push(&text[start..i]);
            start = i;
        }
        blank_before = blank;
    }
    if done && start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Every event of the response so far, from `response.created` (0) on.
pub fn events(rec: &Record, out: &Outcome) -> Vec<Event> {
    let mut evs = Vec::new();
    let mut push = |kind: &'static str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(evs.len());
        evs.push(Event { kind, data });
    };
    let first = if rec.background {
        Status::Queued
    } else {
        Status::InProgress
    };
    push(
        "response.created",
        json!({"response": object(rec, &Outcome::bare(first))}),
    );
    if out.status == Status::Queued {
        return evs;
    }
    let end = |push: &mut dyn FnMut(&'static str, Value)| {
        let kind = match out.status {
            Status::Completed => "response.completed",
            Status::Incomplete => "response.incomplete",
            // The openai client knows no `response.cancelled` event: a
            // cancelled stream ends as failed, with status `cancelled`.
            _ => "response.failed",
        };
        push(kind, json!({"response": object(rec, out)}));
    };
    if out.never_ran {
        end(&mut push);
        return evs;
    }
    let item = message_id(rec);
    push(
        "response.in_progress",
        json!({"response": object(rec, &Outcome::bare(Status::InProgress))}),
    );
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": {"id": item, "type": "message", "role": "assistant",
            "status": "in_progress", "content": []}}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": item, "output_index": 0, "content_index": 0, "part": output_text("")}),
    );
    let (text, done): (Cow<'_, str>, bool) = match (&out.text, &out.partial) {
        (Some(t), _) => (Cow::Borrowed(t.as_str()), true),
        (None, Some(p)) => (visible(valid_utf8(p)), false),
        (None, None) => (Cow::Borrowed(""), false),
    };
    for d in deltas(&text, done) {
        push(
            "response.output_text.delta",
            json!({"item_id": item, "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}),
        );
    }
    match out.status {
        Status::Completed | Status::Incomplete => {
            let status = if out.status == Status::Completed {
                "completed"
            } else {
                "incomplete"
            };
            push(
                "response.output_text.done",
                json!({"item_id": item, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item, "output_index": 0, "content_index": 0, "part": output_text(&text)}),
            );
            push(
                "response.output_item.done",
                json!({"output_index": 0, "item": message(rec, status, &text)}),
            );
            end(&mut push);
        }
        Status::Failed | Status::Cancelled => end(&mut push),
        Status::Queued | Status::InProgress => {}
    }
    evs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_words_with_their_blanks_and_join_to_the_text() {
        assert_eq!(deltas("Hello big  world", true), ["Hello ", "big  ", "world"]);
        assert_eq!(deltas("Hello big  world", false), ["Hello ", "big  "]);
        // Blanks are a delta's only when a word follows them.
        assert_eq!(deltas("Hello big  ", false), ["Hello "]);
        assert_eq!(deltas("Hello big  ", true), ["Hello ", "big  "]);
        assert_eq!(deltas("  lead\nnext", true), ["  ", "lead\n", "next"]);
        assert_eq!(deltas("", true), Vec::<&str>::new());
        assert_eq!(deltas("é ü\u{3000}日本", true), ["é ", "ü\u{3000}", "日本"]);
        for t in ["a b c", " x  y\n\n z ", "one", "日本 語 ", "\n"] {
            assert_eq!(deltas(t, true).concat(), t);
        }
    }

    #[test]
    fn the_deltas_of_a_prefix_begin_the_deltas_of_the_whole_text() {
        let whole = "The quick  brown fox\njumps — over 日本 the lazy dog.\n";
        let full = deltas(whole, true);
        for (cut, _) in whole.char_indices().chain([(whole.len(), ' ')]) {
            let part = deltas(&whole[..cut], false);
            assert_eq!(part[..], full[..part.len()], "at {cut}");
        }
    }

    #[test]
    fn a_half_character_waits_and_think_blocks_never_show() {
        let b = "café".as_bytes();
        assert_eq!(valid_utf8(&b[..4]), "caf");
        assert_eq!(valid_utf8(b), "café");
        assert_eq!(visible("plain <b>"), "plain <b>");
        assert_eq!(visible("<think>hmm"), "");
        assert_eq!(visible("<think>hmm</think>\n\nAns"), "Ans");
        assert_eq!(visible("a<think>x</think>b<think>y"), "ab");
    }

    fn rec(background: bool) -> Record {
        serde_json::from_value(json!({"id": "resp_1_2_3", "created_at": 7, "model": "m", "input": [],
            "background": background}))
        .unwrap()
    }

    fn kinds(evs: &[Event]) -> Vec<&str> {
        evs.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_finished_response_streams_in_openais_order_and_every_earlier_rendering_is_a_prefix() {
        let r = rec(true);
        let queued = events(&r, &Outcome::bare(Status::Queued));
        assert_eq!(kinds(&queued), ["response.created"]);
        assert_eq!(queued[0].data["response"]["status"], "queued");
        let mut running = Outcome::bare(Status::InProgress);
        running.partial = Some(b"Hello wor".to_vec());
        let mid = events(&r, &running);
        let mut done = Outcome::bare(Status::Completed);
        done.text = Some("Hello world".into());
        done.usage = Some((3, 2));
        let all = events(&r, &done);
        assert_eq!(
            kinds(&all),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.data["sequence_number"], i);
            assert_eq!(e.data["type"], e.kind);
        }
        assert_eq!(all[..queued.len()], queued[..]);
        assert_eq!(all[..mid.len()], mid[..]);
        assert_eq!(mid.len(), 5, "only the complete word of partial.txt");
        let joined: String = all
            .iter()
            .filter(|e| e.kind == "response.output_text.delta")
            .map(|e| e.data["delta"].as_str().unwrap())
            .collect();
        assert_eq!(joined, "Hello world");
        assert_eq!(
            all[9].data["response"]["output"][0]["content"][0]["text"],
            "Hello world"
        );
    }

    #[test]
    fn endings_incomplete_failed_and_cancelled_before_it_ran() {
        let r = rec(false);
        assert_eq!(
            events(&r, &Outcome::bare(Status::Queued))[0].data["response"]["status"],
            "in_progress"
        );
        let mut cut = Outcome::bare(Status::Incomplete);
        cut.text = Some("a b".into());
        assert_eq!(events(&r, &cut).last().unwrap().kind, "response.incomplete");
        let mut failed = Outcome::bare(Status::Failed);
        failed.partial = Some(b"half an ans".to_vec());
        let evs = events(&r, &failed);
        assert_eq!(
            kinds(&evs)[3..],
            [
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.failed"
            ]
        );
        let mut never = Outcome::bare(Status::Cancelled);
        never.never_ran = true;
        let evs = events(&r, &never);
        assert_eq!(kinds(&evs), ["response.created", "response.failed"]);
        assert_eq!(evs[1].data["response"]["status"], "cancelled");
    }
}
