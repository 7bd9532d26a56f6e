//! The built-in demo backend: a deterministic text generator with realistic
//! pacing, so the whole system runs on a fresh machine with no model and no
//! keys, and benchmarks can run it with no delay at all.
//!
//! The answer depends only on the prompt and the token count: its seed is
//! the 64-bit FNV-1a hash of the prompt (fixed forever, unlike std's
//! `DefaultHasher`), which drives a small PRNG that combines sentences,
//! short lists and inline `code` from a fixed vocabulary into paragraphs.
//! A token is a word with the whitespace that follows it.
//!
//! Thinking: with `reasoning_tokens` above 0 the demo "thinks" first, like a
//! reasoning model: that many tokens of deterministic reasoning (from the
//! prompt's hash too, and its own vocabulary), paced like the answer, then
//! the answer. Off by default; it exercises the `reasoning` event without a
//! real reasoning model. `usage.completion_tokens` counts the answer alone.
//!
//! Stamps: with `stamp_tokens`, every token (answer and reasoning) starts
//! with the time the demo yielded it, `⟦µs since the Unix epoch⟧`
//! ([`stamp`]), so a client on the same machine measures each token's
//! latency, coalescing wait included; [`strip_stamps`] gives the plain text
//! back. `usage` counts the tokens as ever.
//!
//! Models: the demo serves a request that names no model, the name `demo`,
//! and any name in its configured list (`--models` / `CHAT_MODELS`, the same
//! list the gateways allow); the text does not depend on the model.

use std::time::Duration;

use futures::StreamExt;
use protocol::{FinishReason, Usage};
use tokio::time::Instant;

use super::{Generation, ModelBackend, ModelOutput, OutputStream};

/// The model name the demo always answers for.
pub const DEMO_MODEL: &str = "demo";

/// Pacing and shape of demo answers.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// 0 = no delay at all (not even before the first token).
    pub tokens_per_sec: f64,
    pub first_token: Duration,
    pub answer_tokens: usize,
    /// Tokens of reasoning before every answer; 0 = the demo does not think.
    pub reasoning_tokens: usize,
    /// Model names served besides [`DEMO_MODEL`].
    pub models: Vec<String>,
    /// Every token starts with the time it was yielded (benchmarks).
    pub stamp_tokens: bool,
}

pub struct DemoBackend {
    config: DemoConfig,
}

impl DemoBackend {
    pub fn new(config: DemoConfig) -> Self {
        Self { config }
    }
}

impl ModelBackend for DemoBackend {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn serves_model(&self, model: &str) -> bool {
        model == DEMO_MODEL || self.config.models.iter().any(|m| m == model)
    }

    fn generate(&self, generation: Generation) -> OutputStream {
        let tokens = answer_tokens(&generation.prompt, self.config.answer_tokens);
        let usage = Usage {
            prompt_tokens: u32::try_from(generation.prompt.split_whitespace().count())
                .unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
        };
        let finished = ModelOutput::Finished {
            finish_reason: FinishReason::Stop,
            usage: Some(usage),
        };
        let thinking = reasoning_tokens(&generation.prompt, self.config.reasoning_tokens);
        let items = thinking
            .into_iter()
            .map(ModelOutput::Reasoning)
            .chain(tokens.into_iter().map(ModelOutput::Token))
            .chain(std::iter::once(finished))
            .map(Ok);
        let stamped = self.config.stamp_tokens;
        // Stamped as the stream yields the token: the time the worker has it.
        let stamp_when_yielded = move |item: Result<ModelOutput, _>| match item {
            Ok(ModelOutput::Token(token)) if stamped => Ok(ModelOutput::Token(stamp(&token))),
            Ok(ModelOutput::Reasoning(token)) if stamped => {
                Ok(ModelOutput::Reasoning(stamp(&token)))
            }
            other => other,
        };
        let tps = self.config.tokens_per_sec;
        if !(tps.is_finite() && tps > 0.0) {
            return futures::stream::iter(items).map(stamp_when_yielded).boxed();
        }
        // Each token is due at a fixed time from the start, so pacing does
        // not drift with the time the consumer spends between tokens.
        let start = Instant::now() + self.config.first_token;
        let interval = Duration::try_from_secs_f64(1.0 / tps).unwrap_or(Duration::ZERO);
        futures::stream::iter(items.enumerate())
            .then(move |(i, item)| async move {
                let offset = interval.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
                if matches!(item, Ok(ModelOutput::Token(_) | ModelOutput::Reasoning(_))) {
                    tokio::time::sleep_until(start + offset).await;
                }
                item
            })
            .map(stamp_when_yielded)
            .boxed()
    }
}

/// Opens a token's stamp.
pub const STAMP_OPEN: char = '⟦';
/// Closes a token's stamp.
pub const STAMP_CLOSE: char = '⟧';

/// `token` with the time now before it: `⟦µs since the Unix epoch⟧token`.
pub fn stamp(token: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{STAMP_OPEN}{micros}{STAMP_CLOSE}{token}")
}

/// Appends `text` without its stamps to `plain`, and returns the stamps'
/// times (µs since the Unix epoch), in order. A stamp cut in two (a token
/// split across chunks, which demo words never are) stays in the text.
pub fn strip_stamps(text: &str, plain: &mut String) -> Vec<u64> {
    let mut stamps = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(STAMP_OPEN) {
        let after = &rest[open + STAMP_OPEN.len_utf8()..];
        let parsed = after
            .find(STAMP_CLOSE)
            .and_then(|close| Some((after[..close].parse::<u64>().ok()?, close)));
        match parsed {
            Some((micros, close)) => {
                plain.push_str(&rest[..open]);
                stamps.push(micros);
                rest = &after[close + STAMP_CLOSE.len_utf8()..];
            }
            None => {
                plain.push_str(&rest[..open + STAMP_OPEN.len_utf8()]);
                rest = after;
            }
        }
    }
    plain.push_str(rest);
    stamps
}

/// The exact full text the demo backend streams for `prompt`.
pub fn answer(prompt: &str, tokens: usize) -> String {
    answer_tokens(prompt, tokens).concat()
}

/// The answer as its tokens: exactly `tokens` of them.
pub fn answer_tokens(prompt: &str, tokens: usize) -> Vec<String> {
    if tokens == 0 {
        return Vec::new();
    }
    let mut rng = Rng(fnv1a(prompt.as_bytes()));
    let mut text = String::new();
    opening(&mut rng, prompt, &mut text);
    // A running count: recounting the whole text per paragraph would make
    // long answers (benchmarks ask for a million tokens) quadratic.
    let mut words = word_count(&text);
    while words < tokens {
        let start = text.len();
        text.push_str("\n\n");
        match rng.below(6) {
            0 => list(&mut rng, &mut text),
            1 => code_paragraph(&mut rng, &mut text),
            _ => {
                let n = 3 + rng.below(3);
                prose(&mut rng, &mut text, n)
            }
        }
        words += word_count(&text[start..]);
    }
    let mut out = split_tokens(&text);
    out.truncate(tokens);
    if let Some(last) = out.last_mut() {
        end_cleanly(last);
    }
    out
}

/// The exact reasoning the demo streams for `prompt` before its answer.
pub fn reasoning(prompt: &str, tokens: usize) -> String {
    reasoning_tokens(prompt, tokens).concat()
}

/// The reasoning as its tokens: exactly `tokens` of them, words with the
/// whitespace that follows them, as the answer's.
pub fn reasoning_tokens(prompt: &str, tokens: usize) -> Vec<String> {
    if tokens == 0 {
        return Vec::new();
    }
    // Its own stream of choices, so thinking does not change the answer.
    let mut rng = Rng(fnv1a(prompt.as_bytes()) ^ 0x7468_696e_6b69_6e67);
    let topic: Vec<&str> = prompt.split_whitespace().take(6).collect();
    let mut text = if topic.is_empty() {
        String::from("The user has not asked anything yet.")
    } else {
        format!("The user asks \"{}\".", topic.join(" "))
    };
    let mut words = word_count(&text);
    while words < tokens {
        let start = text.len();
        text.push(' ');
        text.push_str(rng.pick(THOUGHTS));
        words += word_count(&text[start..]);
    }
    let mut out = split_tokens(&text);
    out.truncate(tokens);
    out
}

/// The last token of an answer cut to length ends a sentence rather than
/// trailing off into whitespace.
fn end_cleanly(token: &mut String) {
    let trimmed = token
        .trim_end()
        .trim_end_matches([',', ':', ';'])
        .to_string();
    *token = trimmed;
    if !token.ends_with(['.', '!', '?', '`']) {
        token.push('.');
    }
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Splits text into words, each keeping the whitespace that follows it.
fn split_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for ch in text.chars() {
        let space = ch.is_whitespace();
        if in_space && !space {
            tokens.push(std::mem::take(&mut current));
        }
        in_space = space;
        current.push(ch);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64: tiny, fast and good enough to pick sentences.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is a small vocabulary size; the modulo bias is irrelevant here.
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn opening(rng: &mut Rng, prompt: &str, text: &mut String) {
    let topic: Vec<&str> = prompt.split_whitespace().take(6).collect();
    if topic.is_empty() {
        text.push_str(rng.pick(OPENERS));
    } else {
        text.push_str(rng.pick(TOPIC_OPENERS));
        text.push_str(" \"");
        text.push_str(&topic.join(" "));
        text.push_str("\".");
    }
    text.push(' ');
    let n = 2 + rng.below(3);
    prose(rng, text, n);
}

fn prose(rng: &mut Rng, text: &mut String, sentences: usize) {
    for i in 0..sentences {
        let mut sentence = String::new();
        if rng.below(2) == 0 {
            sentence.push_str(rng.pick(SENTENCES));
        } else {
            sentence.push_str(rng.pick(SUBJECTS));
            sentence.push(' ');
            sentence.push_str(rng.pick(PREDICATES));
        }
        if i > 0 {
            text.push(' ');
            if rng.below(3) == 0 {
                text.push_str(rng.pick(TRANSITIONS));
                text.push(' ');
                // After "In practice," the sentence goes on in lower case.
                let mut chars = sentence.chars();
                if let Some(first) = chars.next() {
                    sentence = first.to_lowercase().chain(chars).collect();
                }
            }
        }
        text.push_str(&sentence);
    }
}

fn list(rng: &mut Rng, text: &mut String) {
    text.push_str(rng.pick(LIST_INTROS));
    let items = 3 + rng.below(2);
    let start = rng.below(LIST_ITEMS.len());
    for i in 0..items {
        text.push_str("\n- ");
        text.push_str(LIST_ITEMS[(start + i * 3) % LIST_ITEMS.len()]);
    }
}

fn code_paragraph(rng: &mut Rng, text: &mut String) {
    text.push_str(rng.pick(CODE_LEADS));
    text.push_str(" `");
    text.push_str(rng.pick(CODE_SNIPPETS));
    text.push_str("` ");
    text.push_str(rng.pick(CODE_TAILS));
    text.push(' ');
    let n = 1 + rng.below(2);
    prose(rng, text, n);
}

const THOUGHTS: &[&str] = &[
    "Let me think about what they actually need.",
    "First, what do I know for sure?",
    "Hmm, there may be more than one reading of this.",
    "I should keep the answer short and concrete.",
    "Maybe an example would make it clearer.",
    "Wait, let me check that assumption again.",
    "A list might help here, or maybe just prose.",
    "The simplest explanation is probably the right one.",
    "I will start with the main point, then the details.",
    "Is there a common mistake worth mentioning?",
];

const OPENERS: &[&str] = &[
    "That is a good question, and the short answer is that it depends on what you value most.",
    "Let me walk through this step by step.",
    "Here is how I would think about it.",
    "There are a few ways to look at this.",
];

const TOPIC_OPENERS: &[&str] = &[
    "Here is how I would approach",
    "Let me think out loud about",
    "There is more to say than it first seems about",
    "A good way to start is to restate the question:",
];

const TRANSITIONS: &[&str] = &[
    "In practice,",
    "That said,",
    "On the other hand,",
    "More importantly,",
    "For example,",
    "As a rule of thumb,",
    "Over time,",
    "Put simply,",
];

const SENTENCES: &[&str] = &[
    "Most problems become easier once you write down what you actually know.",
    "The simplest design that meets the requirements is usually the one that survives.",
    "It helps to measure before you optimise, because intuition about performance is often wrong.",
    "A small experiment today is worth more than a long debate next week.",
    "Keep the moving parts few and the boundaries between them clear.",
    "Good names do half the work of documentation.",
    "When something fails, it should fail loudly and close to the cause.",
    "The weather in the mountains can change within an hour, so pack a warm layer.",
    "Bread dough needs time more than it needs effort.",
    "Reading a chapter a day adds up to a surprising number of books in a year.",
    "A walk after lunch clears the head better than another cup of coffee.",
    "The hardest part of learning a language is speaking before you feel ready.",
    "Every queue needs a bound, or it will eventually hold everything.",
    "Retries are only safe when the operation they repeat is idempotent.",
    "Small teams move fast because they share context without meetings.",
    "History rarely repeats exactly, but it often rhymes.",
];

const SUBJECTS: &[&str] = &[
    "A careful plan",
    "The first version",
    "A good habit",
    "Clear feedback",
    "The default setting",
    "A short checklist",
    "Your future self",
    "A well-chosen example",
    "The team",
    "A quiet morning",
    "The second draft",
    "Patience",
];

const PREDICATES: &[&str] = &[
    "saves more time than it costs.",
    "tends to reveal the real constraints early.",
    "makes the next step obvious.",
    "is worth revisiting after a week.",
    "rarely needs to be perfect to be useful.",
    "turns a vague worry into a concrete task.",
    "will thank you for writing it down.",
    "is often the difference between progress and drift.",
    "matters more than the tools you pick.",
    "keeps surprises small and cheap.",
];

const LIST_INTROS: &[&str] = &[
    "A few things worth checking:",
    "In short, I would suggest:",
    "Here is a compact checklist:",
    "The main points are:",
];

const LIST_ITEMS: &[&str] = &[
    "start with the smallest version that works",
    "write down the assumptions you are making",
    "measure the result instead of guessing",
    "ask someone to review the plan",
    "keep a log of what you tried",
    "set a time box and stick to it",
    "remove one thing before adding another",
    "test the failure cases, not only the happy path",
    "sleep on big decisions",
    "share what you learned with the team",
];

const CODE_LEADS: &[&str] = &[
    "If you are working in a terminal, you can try",
    "A quick way to check is to run",
    "In code, this often looks like",
    "For instance, a call such as",
];

const CODE_SNIPPETS: &[&str] = &[
    "cargo test",
    "git log --oneline",
    "let total = items.iter().sum();",
    "nats stream info CHAT_EVENTS",
    "grep -r TODO src",
    "du -sh *",
];

const CODE_TAILS: &[&str] = &[
    "and compare the output with what you expected.",
    "to see where things stand.",
    "which keeps the intent visible.",
    "before changing anything else.",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_standard_one() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn stamps_come_off_whole_and_give_their_times() {
        let stamped = format!("{}{}", stamp("Hello "), stamp("world."));
        let mut plain = String::new();
        let times = strip_stamps(&stamped, &mut plain);
        assert_eq!(plain, "Hello world.");
        assert_eq!(times.len(), 2);
        assert!(times[0] > 1_600_000_000_000_000 && times[0] <= times[1]);
        let mut plain = String::from("x");
        assert_eq!(strip_stamps("⟦12⟧a ⟦oops⟧b ⟦3", &mut plain), [12]);
        assert_eq!(plain, "xa ⟦oops⟧b ⟦3");
    }

    #[test]
    fn tokens_are_words_with_their_whitespace() {
        assert_eq!(split_tokens("a b\n\n- c"), vec!["a ", "b\n\n", "- ", "c"]);
    }
}
