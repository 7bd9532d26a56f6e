//! Loss is an error: what each client received is checked as it arrives
//! (sequence strictly rising, chunk indexes contiguous from 0 and reasoning
//! indexes too, in their own sequence, exactly one
//! `done`, the answer's whole text equal to the demo backend's) and, at the
//! end, against what the session's stream stored (`GET /api/events`).

use anyhow::{anyhow, bail, Context};
use protocol::EventKind;
use serde::Deserialize;

use super::socket::{Endpoint, Frame};

/// One answer being received.
#[derive(Debug)]
pub(crate) struct MessageCheck {
    pub message_id: String,
    prompt: String,
    /// 0 until the first chunk (or reasoning).
    attempt: u32,
    next_index: u32,
    next_reasoning: u32,
    text: String,
    pub restarts: u32,
}

impl MessageCheck {
    pub(crate) fn new(message_id: String, prompt: String) -> Self {
        Self {
            message_id,
            prompt,
            attempt: 0,
            next_index: 0,
            next_reasoning: 0,
            text: String::new(),
            restarts: 0,
        }
    }

    fn is_ours(&self, frame: &Frame<'_>) -> Result<(), String> {
        match frame.message_id.as_deref() {
            Some(id) if id == self.message_id => Ok(()),
            other => Err(format!(
                "{} of message {other:?} while receiving {}",
                frame.kind, self.message_id
            )),
        }
    }

    /// Whether this chunk is the first of the answer.
    pub(crate) fn chunk(&mut self, frame: &Frame<'_>) -> Result<bool, String> {
        self.is_ours(frame)?;
        let index = frame.index.ok_or("chunk without index")?;
        self.enter_attempt(frame)?;
        Self::next_in_order(&self.message_id, "chunk", &mut self.next_index, index)?;
        if let Some(text) = &frame.text {
            self.text.push_str(text);
        }
        Ok(index == 0)
    }

    /// A piece of the model's reasoning: contiguous in its own sequence,
    /// not part of the answer's text.
    pub(crate) fn reasoning(&mut self, frame: &Frame<'_>) -> Result<(), String> {
        self.is_ours(frame)?;
        let index = frame.index.ok_or("reasoning without index")?;
        self.enter_attempt(frame)?;
        Self::next_in_order(
            &self.message_id,
            "reasoning",
            &mut self.next_reasoning,
            index,
        )
    }

    /// A chunk or reasoning of a newer attempt starts that attempt over
    /// (counted as a restart); one of an older attempt is an error.
    fn enter_attempt(&mut self, frame: &Frame<'_>) -> Result<(), String> {
        let attempt = frame.attempt.unwrap_or(1);
        if attempt < self.attempt {
            return Err(format!(
                "{} of attempt {attempt} after attempt {}",
                frame.kind, self.attempt
            ));
        }
        if attempt > self.attempt {
            if self.attempt != 0 {
                self.restarts += 1;
            }
            self.start_attempt(attempt);
        }
        Ok(())
    }

    fn next_in_order(
        message_id: &str,
        kind: &str,
        next: &mut u32,
        index: u32,
    ) -> Result<(), String> {
        if index != *next {
            return Err(if index < *next {
                format!("message {message_id}: {kind} {index} twice")
            } else {
                format!("message {message_id}: {kind}s {next}..{index} missing")
            });
        }
        *next += 1;
        Ok(())
    }

    pub(crate) fn restart(&mut self, frame: &Frame<'_>) -> Result<(), String> {
        self.is_ours(frame)?;
        let attempt = frame.attempt.ok_or("restart without attempt")?;
        if attempt <= self.attempt {
            return Err(format!(
                "restart to attempt {attempt} during {}",
                self.attempt
            ));
        }
        self.restarts += 1;
        self.start_attempt(attempt);
        Ok(())
    }

    fn start_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
        self.next_index = 0;
        self.next_reasoning = 0;
        self.text.clear();
    }

    /// Checks the whole answer on `done`: the demo backend's text for the
    /// prompt at the token count the worker reports (or `answer_tokens`).
    pub(crate) fn done(&self, frame: &Frame<'_>, answer_tokens: usize) -> Result<(), String> {
        self.is_ours(frame)?;
        if let Some(attempt) = frame.attempt {
            if self.attempt != 0 && attempt != self.attempt {
                return Err(format!(
                    "done of attempt {attempt} after chunks of attempt {}",
                    self.attempt
                ));
            }
        }
        let tokens = frame
            .usage
            .as_ref()
            .map_or(answer_tokens, |u| u.completion_tokens);
        let expected = worker::backends::demo::answer(&self.prompt, tokens);
        if self.text != expected {
            return Err(format!(
                "message {}: answer of {} bytes in {} chunks differs from the expected {} bytes",
                self.message_id,
                self.text.len(),
                self.next_index,
                expected.len()
            ));
        }
        Ok(())
    }
}

/// A session's answer that ended (its `done` came), as the next answer's
/// turn still meets it: a run of it that a `restart` superseded may store
/// its last chunks after the answer's end (a run's chunks after its first
/// event are not fenced), and a client ignores every `chunk`, `reasoning`
/// or `restart` of a message whose `attempt` is below the highest it saw
/// for that message (PROTOCOL.md, "Answers").
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    message_id: String,
    attempt: u32,
}

impl Answered {
    /// The answer `done` ended (the attempt the `done` names).
    pub(crate) fn from_done(frame: &Frame<'_>) -> Option<Self> {
        Some(Self {
            message_id: frame.message_id.as_deref()?.to_string(),
            attempt: frame.attempt.unwrap_or(1),
        })
    }

    /// Whether `frame`, of kind `kind`, is a late event of a superseded
    /// attempt of this answer, to be ignored.
    pub(crate) fn superseded(&self, kind: Option<EventKind>, frame: &Frame<'_>) -> bool {
        matches!(
            kind,
            Some(EventKind::Chunk | EventKind::Reasoning | EventKind::Restart)
        ) && frame.message_id.as_deref() == Some(self.message_id.as_str())
            && frame.attempt.unwrap_or(1) < self.attempt
    }
}

/// Received sequence numbers of one connection, strictly rising.
#[derive(Debug, Default, Clone)]
pub struct SeqLog {
    pub seqs: Vec<u64>,
    last: u64,
}

impl SeqLog {
    pub(crate) fn after(last_seq: u64) -> Self {
        Self {
            seqs: Vec::new(),
            last: last_seq,
        }
    }

    pub(crate) fn push(&mut self, seq: u64) -> Result<(), String> {
        if seq <= self.last {
            return Err(format!(
                "seq {seq} after {} (doubled or out of order)",
                self.last
            ));
        }
        self.last = seq;
        self.seqs.push(seq);
        Ok(())
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

#[derive(Deserialize)]
struct StoredEvents {
    events: Vec<StoredSeq>,
}

#[derive(Deserialize)]
struct StoredSeq {
    seq: u64,
}

/// The sequences the session's stream holds after `after_seq`, page by
/// page (the gateway answers at most a page of events per request).
pub(crate) async fn stored_seqs(
    endpoint: &Endpoint,
    session: &str,
    token: &str,
    after_seq: u64,
) -> anyhow::Result<Vec<u64>> {
    let auth = format!("Bearer {token}");
    let mut seqs = Vec::new();
    let mut after = after_seq;
    loop {
        let url = format!(
            "{}/api/events?session={session}&after_seq={after}",
            endpoint.http()
        );
        let response = stack::http_get_full(&url, &[("Authorization", &auth)]).await?;
        if response.status != 200 {
            bail!("GET {url}: {} {}", response.status, response.body);
        }
        let page: StoredEvents =
            serde_json::from_str(&response.body).with_context(|| format!("GET {url}: body"))?;
        let Some(last) = page.events.last().map(|e| e.seq) else {
            return Ok(seqs);
        };
        seqs.extend(page.events.iter().map(|e| e.seq));
        // The page's `last_seq` is its own last event: ask until a page is empty.
        if last <= after {
            bail!("GET {url}: a page ending at {last}, not after {after}");
        }
        after = last;
    }
}

/// Compares what a client received with what was stored: the same
/// sequences, none missing, none extra.
pub(crate) fn compare(received: &[u64], stored: &[u64]) -> anyhow::Result<()> {
    if received == stored {
        return Ok(());
    }
    let missing: Vec<u64> = stored
        .iter()
        .filter(|s| received.binary_search(s).is_err())
        .copied()
        .take(5)
        .collect();
    let extra: Vec<u64> = received
        .iter()
        .filter(|s| stored.binary_search(s).is_err())
        .copied()
        .take(5)
        .collect();
    Err(anyhow!(
        "received {} events, the stream stored {}; first missing {missing:?}, first never stored {extra:?}",
        received.len(),
        stored.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: &str, attempt: u32, index: u32, text: &str) -> String {
        serde_json::json!({"type":"chunk","message_id":id,"attempt":attempt,"index":index,"text":text,"seq":1}).to_string()
    }

    fn done(id: &str, tokens: usize) -> String {
        serde_json::json!({"type":"done","message_id":id,"attempt":1,"finish_reason":"stop","usage":{"prompt_tokens":1,"completion_tokens":tokens},"seq":2}).to_string()
    }

    fn done_of(id: &str, attempt: u32) -> String {
        serde_json::json!({"type":"done","message_id":id,"attempt":attempt,"finish_reason":"stop","seq":3}).to_string()
    }

    #[test]
    fn a_whole_answer_passes_and_a_gap_or_double_fails() {
        let tokens = worker::backends::demo::answer_tokens("why?", 12);
        let mut m = MessageCheck::new("m1".into(), "why?".into());
        for (i, t) in tokens.iter().enumerate() {
            let text = chunk("m1", 1, i as u32, t);
            assert_eq!(m.chunk(&Frame::parse(&text).unwrap()), Ok(i == 0));
        }
        m.done(&Frame::parse(&done("m1", 12)).unwrap(), 0).unwrap();
        // The wrong length or a missing piece is caught by the text compare.
        assert!(m.done(&Frame::parse(&done("m1", 13)).unwrap(), 0).is_err());

        let mut gap = MessageCheck::new("m2".into(), "why?".into());
        gap.chunk(&Frame::parse(&chunk("m2", 1, 0, "a")).unwrap())
            .unwrap();
        let err = gap
            .chunk(&Frame::parse(&chunk("m2", 1, 2, "c")).unwrap())
            .unwrap_err();
        assert!(err.contains("missing"), "{err}");
        let err = gap
            .chunk(&Frame::parse(&chunk("m2", 1, 0, "a")).unwrap())
            .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = gap
            .chunk(&Frame::parse(&chunk("other", 1, 1, "b")).unwrap())
            .unwrap_err();
        assert!(err.contains("while receiving"), "{err}");

        // After an answer whose attempt 2 ended it, attempt 1's late chunk
        // is ignored; anything else of it (or of attempt 2) is not.
        let ended = Answered::from_done(&Frame::parse(&done_of("m1", 2)).unwrap()).unwrap();
        let superseded = |text: String| {
            let frame = Frame::parse(&text).unwrap();
            ended.superseded(EventKind::parse(&frame.kind), &frame)
        };
        assert!(superseded(chunk("m1", 1, 7, "late")));
        assert!(!superseded(chunk("m1", 2, 7, "again")));
        assert!(!superseded(chunk("m0", 1, 7, "other")));
        assert!(!superseded(done_of("m1", 1)));
    }

    #[test]
    fn reasoning_is_checked_in_its_own_sequence_and_is_not_the_answer() {
        let tokens = worker::backends::demo::answer_tokens("why?", 4);
        let reasoning = |attempt: u32, index: u32| {
            chunk("m", attempt, index, "hmm").replace("\"chunk\"", "\"reasoning\"")
        };
        let mut m = MessageCheck::new("m".into(), "why?".into());
        for i in 0..3 {
            m.reasoning(&Frame::parse(&reasoning(1, i)).unwrap())
                .unwrap();
        }
        for (i, t) in tokens.iter().enumerate() {
            let text = chunk("m", 1, i as u32, t);
            assert_eq!(m.chunk(&Frame::parse(&text).unwrap()), Ok(i == 0));
        }
        m.done(&Frame::parse(&done("m", 4)).unwrap(), 0).unwrap();
        assert_eq!(m.restarts, 0);

        let mut gap = MessageCheck::new("m".into(), "why?".into());
        gap.reasoning(&Frame::parse(&reasoning(1, 0)).unwrap())
            .unwrap();
        let err = gap
            .reasoning(&Frame::parse(&reasoning(1, 2)).unwrap())
            .unwrap_err();
        assert!(err.contains("reasonings 1..2 missing"), "{err}");
        // A newer attempt's reasoning starts over from 0.
        gap.reasoning(&Frame::parse(&reasoning(2, 0)).unwrap())
            .unwrap();
        assert_eq!(gap.restarts, 1);
        let err = gap
            .reasoning(&Frame::parse(&reasoning(1, 1)).unwrap())
            .unwrap_err();
        assert!(err.contains("after attempt 2"), "{err}");
    }

    #[test]
    fn a_restart_starts_the_answer_over() {
        let tokens = worker::backends::demo::answer_tokens("p", 3);
        let mut m = MessageCheck::new("m".into(), "p".into());
        m.chunk(&Frame::parse(&chunk("m", 1, 0, &tokens[0])).unwrap())
            .unwrap();
        let restart = r#"{"type":"restart","message_id":"m","attempt":2,"seq":5}"#;
        m.restart(&Frame::parse(restart).unwrap()).unwrap();
        for (i, t) in tokens.iter().enumerate() {
            m.chunk(&Frame::parse(&chunk("m", 2, i as u32, t)).unwrap())
                .unwrap();
        }
        let done2 = done("m", 3).replace("\"attempt\":1", "\"attempt\":2");
        m.done(&Frame::parse(&done2).unwrap(), 0).unwrap();
        assert_eq!(m.restarts, 1);
    }

    #[test]
    fn sequences_must_rise_and_match_the_stream() {
        let mut log = SeqLog::after(3);
        assert!(log.push(3).is_err());
        log.push(4).unwrap();
        log.push(9).unwrap();
        assert!(log.push(9).is_err());
        assert!(compare(&log.seqs, &[4, 9]).is_ok());
        let err = compare(&log.seqs, &[4, 7, 9]).unwrap_err().to_string();
        assert!(err.contains("missing [7]"), "{err}");
    }
}
