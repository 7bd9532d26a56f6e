//! Reconnect with `after_seq`: how long until the last of N missed events
//! has arrived, through Nginx, on a fresh WebSocket (handshake and `ready`
//! included, as a browser coming back would see it).

use std::time::Instant;

use anyhow::{bail, Context};

use super::ledger::SeqLog;
use super::load::{self, SessionLog};
use protocol::ControlKind;

use super::socket::{Attach, Endpoint, Frame, Socket, FRAME_TIMEOUT};
use super::stats::Samples;

/// A session holding at least `events + 1` events.
pub async fn prepare(
    endpoint: &Endpoint,
    events: usize,
    answer_tokens: usize,
) -> anyhow::Result<SessionLog> {
    // A turn stores the user message, its chunks and done: at least
    // answer_tokens / chunk size + 2 events; with a chunk per token,
    // answer_tokens + 2.
    let per_turn = answer_tokens.max(1) + 2;
    let mut turns = (events + 1).div_ceil(per_turn);
    loop {
        let log = load::converse(endpoint, turns, answer_tokens).await?;
        if log.seqs.seqs.len() > events {
            return Ok(log);
        }
        if turns > 10_000 {
            bail!("a session of {turns} turns still holds fewer than {events} events");
        }
        // Chunks coalesce several tokens: more turns are needed.
        let have = log.seqs.seqs.len().max(1);
        turns = turns * (events + 1) / have + 1;
    }
}

/// Reconnects `samples` times with `after_seq` such that exactly `events`
/// events are replayed; checks each replay is exactly those events in order.
pub async fn measure(
    endpoint: &Endpoint,
    session: &SessionLog,
    events: usize,
    samples: usize,
) -> anyhow::Result<Samples> {
    let seqs = &session.seqs.seqs;
    if seqs.len() <= events {
        bail!(
            "the session holds {} events, not {}",
            seqs.len(),
            events + 1
        );
    }
    let after_seq = seqs[seqs.len() - events - 1];
    let expected = &seqs[seqs.len() - events..];
    let last = session.seqs.last();
    let attach = Attach {
        session: Some((session.session_id.clone(), session.token.clone())),
        after_seq: Some(after_seq),
    };
    let mut timings = Samples::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        let (mut socket, _ready) = Socket::connect(endpoint, &attach)
            .await
            .with_context(|| format!("replay {i}: connecting"))?;
        let mut got = SeqLog::after(after_seq);
        while got.last() < last {
            let Some(text) = socket.next_text(FRAME_TIMEOUT).await? else {
                bail!("replay {i}: closed after {} events", got.seqs.len());
            };
            let frame = Frame::parse(&text)?;
            if let (Some(seq), false) = (frame.seq, frame.is(ControlKind::Accepted)) {
                got.push(seq)
                    .map_err(|e| anyhow::anyhow!("replay {i}: {e}"))?;
            }
        }
        timings.push(start.elapsed());
        if got.seqs != expected {
            bail!(
                "replay {i}: got {} events, expected {} (from seq {})",
                got.seqs.len(),
                expected.len(),
                after_seq + 1
            );
        }
        socket.close().await;
    }
    Ok(timings)
}
