use super::*;

#[test]
fn the_control_s_extra_cpu_is_spent_on_the_thread() {
    // This thread's time on a core and waiting for one, in ns (the
    // kernel's own counts): a spin keeps it runnable throughout, so the
    // two add up to the spin even when other threads take the cores.
    let runnable = || {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        let (ran, waited) = (fields.next().unwrap(), fields.next().unwrap());
        (Duration::from_nanos(ran), Duration::from_nanos(waited))
    };
    let before = runnable();
    spin(Duration::from_millis(20));
    let after = runnable();
    let (ran, waited) = (after.0 - before.0, after.1 - before.1);
    assert!(ran > Duration::ZERO, "{ran:?}");
    assert!(
        ran + waited >= Duration::from_millis(15),
        "{ran:?} + {waited:?}"
    );
    let before = runnable();
    spin(Duration::ZERO);
    let after = runnable();
    assert!(after.0 - before.0 < Duration::from_millis(1));
}

#[test]
fn demo_tokens_are_counted_by_their_starts() {
    let tokens = worker::backends::demo::answer_tokens("why is the sky blue?", 120);
    assert_eq!(token_starts(&tokens.concat()), 120);
    // Whole tokens in any grouping count the same.
    let grouped: usize = tokens.chunks(7).map(|c| token_starts(&c.concat())).sum();
    assert_eq!(grouped, 120);
    assert_eq!(token_starts(""), 0);
}

#[test]
fn stamps_come_off_before_the_ledger_sees_the_text_even_cut_in_two() {
    let stamped = format!(
        "{}{}{}",
        worker::backends::demo::stamp("Hello "),
        worker::backends::demo::stamp("big "),
        worker::backends::demo::stamp("world.")
    );
    let frame_of = |text: &str| serde_json::json!({"type": "chunk", "text": text}).to_string();
    // Cut inside the second stamp, at a character boundary.
    let mut cut = 30;
    while !stamped.is_char_boundary(cut) {
        cut += 1;
    }
    let (first, second) = (frame_of(&stamped[..cut]), frame_of(&stamped[cut..]));
    let mut stamps = Unstamper::new(true);
    let mut frame = Frame::parse(&first).unwrap();
    assert_eq!(stamps.answer(&mut frame).len(), 1);
    assert_eq!(frame.text.as_deref(), Some("Hello "));
    let mut frame = Frame::parse(&second).unwrap();
    assert_eq!(stamps.answer(&mut frame).len(), 2);
    assert_eq!(frame.text.as_deref(), Some("big world."));
    // Not stamped: the text stays as it is.
    let whole = frame_of(&stamped);
    let mut frame = Frame::parse(&whole).unwrap();
    assert!(Unstamper::new(false).answer(&mut frame).is_empty());
    assert_eq!(frame.text.as_deref(), Some(stamped.as_str()));
}

#[test]
fn staggered_sessions_ask_first_evenly_over_one_paced_answer() {
    // The paced default: a 150 ms first-token wait, then 80 tokens at 50/s.
    let stagger = Stagger::paced_answer(Duration::from_millis(150), 80, 50.0);
    assert_eq!(stagger.span, Duration::from_millis(1_750));
    let starts: Vec<Duration> = (0..4).map(|i| stagger.first_question(i, 4)).collect();
    assert_eq!(starts[0], Duration::ZERO);
    // One step apart, the last a step before the span ends: the next
    // turn of the first session falls where a fifth would have started.
    for pair in starts.windows(2) {
        assert_eq!(pair[1] - pair[0], stagger.span / 4);
    }
    assert_eq!(starts[3] + stagger.span / 4, stagger.span);
}

#[test]
fn in_step_and_unpaced_sessions_all_ask_at_once() {
    let unpaced = Stagger::paced_answer(Duration::ZERO, 80, 0.0);
    let in_step = Stagger::default();
    for stagger in [unpaced, in_step] {
        assert!((0..100).all(|i| stagger.first_question(i, 100).is_zero()));
    }
    // No sessions, no division by zero.
    assert!(in_step.first_question(0, 0).is_zero());
}

/// Tokens of the scripted peer's answers.
const SCRIPTED_TOKENS: usize = 6;

/// Plays the gateway for two turns over a real WebSocket. The first
/// answer restarts (attempt 1 superseded by attempt 2, which ends in
/// `done`); then, while the second turn streams, attempt 1's last chunk
/// arrives late, as a superseded run's unfenced chunk can be stored
/// after the answer's end.
async fn serve_a_late_superseded_chunk(listener: tokio::net::TcpListener) {
    use futures::SinkExt;
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let ready = json!({"type": ControlKind::Ready.as_str(), "session_id": "s", "token": "t", "node": "n", "last_seq": 0});
    ws.send(Message::text(ready.to_string())).await.unwrap();
    let mut seq = 0u64;
    let mut answered: Option<String> = None;
    for _ in 0..2 {
        let chat = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
                _ => continue,
            }
        };
        let id = chat["message_id"].as_str().unwrap().to_string();
        let prompt = chat["content"].as_str().unwrap();
        let tokens = worker::backends::demo::answer_tokens(prompt, SCRIPTED_TOKENS);
        let chunk = |id: &str, attempt: u32, index: u32, text: &str| json!({"type": EventKind::Chunk.as_str(), "message_id": id, "attempt": attempt, "index": index, "text": text});
        let mut frames = Vec::new();
        let attempt = match &answered {
            None => {
                frames.push(chunk(&id, 1, 0, &tokens[0]));
                frames.push(
                    json!({"type": EventKind::Restart.as_str(), "message_id": id, "attempt": 2}),
                );
                2
            }
            Some(earlier) => {
                frames.push(chunk(earlier, 1, 1, &tokens[1]));
                1
            }
        };
        frames.push(chunk(&id, attempt, 0, &tokens.concat()));
        frames.push(
            json!({"type": EventKind::Done.as_str(), "message_id": id, "attempt": attempt,
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": SCRIPTED_TOKENS}}),
        );
        for mut frame in frames {
            seq += 1;
            frame["seq"] = seq.into();
            ws.send(Message::text(frame.to_string())).await.unwrap();
        }
        answered = Some(id);
    }
    // Until the client closes.
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn a_superseded_attempts_chunk_after_its_answers_done_is_ignored() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let server = tokio::spawn(serve_a_late_superseded_chunk(listener));
    let (mut socket, ready) = Socket::connect(&endpoint, &Attach::default())
        .await
        .unwrap();
    let spec = LoadSpec {
        sessions: 1,
        warmup: Duration::ZERO,
        measure: Duration::ZERO,
        stagger: Stagger::default(),
        connect_concurrency: 1,
        answer_tokens: SCRIPTED_TOKENS,
        max_turns: Some(2),
        stamped_tokens: false,
        extra_client_cpu_per_token: Duration::ZERO,
        trace_tokens: false,
        worker_metrics: Vec::new(),
    };
    let mut run = SessionRun::new(&ready, &spec);
    let shared = Shared::default();
    for i in 0..2 {
        let prompt = format!("scripted question {i}");
        let turned = turn(&endpoint, &mut socket, &mut run, &shared, &spec, prompt);
        let outcome = tokio::time::timeout(Duration::from_secs(10), turned)
            .await
            .unwrap();
        assert_eq!(outcome, Ok(()), "turn {i}");
    }
    assert_eq!(run.restarts, 1);
    // The late chunk is a stored event: its seq is logged, its text
    // is not counted.
    assert_eq!(run.log.seqs.seqs, (1..=7).collect::<Vec<u64>>());
    assert_eq!(shared.chunks.load(Ordering::Relaxed), 3);
    socket.close().await;
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}
