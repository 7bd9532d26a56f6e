//! Jobs that will not be tried again. Two ways in: a job that fails on its
//! last attempt (the job's ending stores [`exhausted_event`], the letter
//! ([`store`]) and the failed turn, then terms it), and a job
//! whose last holder died, which the server reports with the max-deliveries
//! advisory ([`listen`]). The advisory goes to one worker of the queue group,
//! which deletes the job after dead-lettering it, so nothing is
//! dead-lettered twice.

use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use protocol::records::{DeadLetter, TurnStatus};
use protocol::{sessions, subjects, ChatRequest, ErrorCode, Event, MessageId};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::JobContext;
use crate::metrics::{self, Outcome};
use crate::publish::{once_per_message, publish_and_wait, PublishFailed};
use crate::turns::{self, Answer};

/// Tells the session the answer failed for good, stores the dead letter and
/// the failed turn, and finishes the session record. The caller removes the
/// job from the work-queue.
pub async fn dead_letter(
    ctx: &JobContext,
    request: &ChatRequest,
    reason: &str,
    deliveries: u64,
) -> Result<(), PublishFailed> {
    let event = exhausted_event(request.message_id, deliveries);
    publish_and_wait(
        &ctx.js,
        subjects::events(request.session_id),
        PublishMessage::build().payload(event.to_payload()),
    )
    .await?;
    store(ctx, request, reason, deliveries).await?;
    let attempt = u32::try_from(deliveries).unwrap_or(u32::MAX);
    let answer = Answer::unfinished(TurnStatus::Failed, String::new());
    turns::record(ctx, request, attempt, answer).await
}

/// The event that tells a session its answer failed for good.
pub fn exhausted_event(message: MessageId, deliveries: u64) -> Event {
    Event::Error {
        message_id: Some(message),
        code: ErrorCode::RetriesExhausted,
        message: format!("the answer failed after {deliveries} attempts"),
    }
}

/// Stores the dead letter, deduplicated on the message id.
pub async fn store(
    ctx: &JobContext,
    request: &ChatRequest,
    reason: &str,
    deliveries: u64,
) -> Result<(), PublishFailed> {
    let letter = DeadLetter {
        request: request.clone(),
        reason: reason.to_string(),
        deliveries,
        failed_at_ms: protocol::now_ms(),
        extra: Default::default(),
    };
    let payload = serde_json::to_vec(&letter)?;
    publish_and_wait(
        &ctx.js,
        subjects::dead(request.session_id),
        once_per_message(payload.into(), request.session_id, request.message_id),
    )
    .await
}

/// The fields of the server's max-deliveries advisory that matter here.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Listens (in the queue group) for the max-deliveries advisory until `stop` fires.
pub async fn listen(
    ctx: Arc<JobContext>,
    client: async_nats::Client,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
    let mut advisories = client
        .queue_subscribe(
            subjects::max_deliveries_advisory(),
            subjects::DEAD_LETTER_QUEUE_GROUP.to_string(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(Some(message)) = stop.run_until_cancelled(advisories.next()).await {
            match serde_json::from_slice::<MaxDeliveries>(&message.payload) {
                Ok(advisory) => exhausted(&ctx, advisory).await,
                Err(e) => tracing::warn!(error = %e, "unreadable max-deliveries advisory"),
            }
        }
        let _ = advisories.unsubscribe().await;
    }))
}

/// Dead-letters the job the advisory names, then deletes it from the queue.
async fn exhausted(ctx: &JobContext, advisory: MaxDeliveries) {
    let seq = advisory.stream_seq;
    let stored = match ctx.layout.requests.get_raw_message(seq).await {
        Ok(stored) => stored,
        Err(e) => {
            // Already removed (acked, termed, or dead-lettered by another worker).
            tracing::debug!(stream_seq = seq, error = %e, "exhausted job no longer queued");
            return;
        }
    };
    let request: ChatRequest = match serde_json::from_slice(&stored.payload) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(stream_seq = seq, error = %e, "unreadable exhausted job; deleted");
            delete(ctx, seq).await;
            return;
        }
    };
    let finished = matches!(
        sessions::load(&ctx.layout.sessions, request.session_id).await,
        Ok(Some(v)) if v.record.is_finished(request.message_id)
    );
    if !finished {
        let reason = format!(
            "no worker acknowledged the job in {} deliveries",
            advisory.deliveries
        );
        if let Err(e) = dead_letter(ctx, &request, &reason, advisory.deliveries).await {
            tracing::warn!(
                message_id = %request.message_id,
                error = %e,
                "dead-lettering failed; the job stays in the queue"
            );
            return;
        }
        metrics::job_finished(Outcome::DeadLettered);
    }
    delete(ctx, seq).await;
    tracing::info!(
        message_id = %request.message_id,
        session_id = %request.session_id,
        deliveries = advisory.deliveries,
        outcome = Outcome::DeadLettered.as_str(),
        already_finished = finished,
        "job finished"
    );
}

async fn delete(ctx: &JobContext, seq: u64) {
    if let Err(e) = ctx.layout.requests.delete_message(seq).await {
        tracing::warn!(stream_seq = seq, error = %e, "deleting an exhausted job");
    }
}
