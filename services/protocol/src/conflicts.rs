//! JetStream refusals async-nats 0.51 does not name: it reports them as an
//! unspecific failure, with the server's error as the source. They are
//! told apart here by the server's error code, the one place that reads it.

use async_nats::jetstream::ErrorCode;

/// The JetStream error code somewhere in `e`'s chain of sources.
fn jetstream_code(e: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(api) = error.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(api.error_code());
        }
        next = error.source();
    }
    None
}

/// Whether a compare-and-set write (`Nats-Expected-Last-Subject-Sequence`,
/// a KV update) was refused because the subject moved on. JetStream says so
/// with error 10071 ("wrong last sequence: n") or, from a clustered
/// stream's leader, 10164 ("wrong last sequence"); async-nats 0.51 knows
/// only the first and reports the second as an unspecific failure, so a
/// conflict on an R3 stream would end the write instead of retrying it.
pub fn is_wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        jetstream_code(e),
        Some(
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        )
    )
}

/// Whether a publish with a `Nats-Msg-Id` was refused because an earlier
/// copy of the same id is still being stored (10158, "duplicate message id
/// is in process": a cluster's proposal in flight). Stored or not is
/// unknown until it settles; asked again, it is answered as a duplicate.
pub fn is_duplicate_in_process(e: &(dyn std::error::Error + 'static)) -> bool {
    jetstream_code(e) == Some(ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::kv;

    /// A JetStream API error as the server sends it.
    fn api_error(err_code: u64) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": "refused"
        }))
        .unwrap()
    }

    #[test]
    fn both_codes_of_a_moved_subject_are_a_conflict() {
        // What a clustered stream's leader answers, as async-nats 0.51 wraps it.
        let constant = PublishError::with_source(PublishErrorKind::Other, api_error(10164));
        assert!(is_wrong_last_sequence(&constant));
        let update: kv::UpdateError = constant.into();
        assert_eq!(update.kind(), kv::UpdateErrorKind::Other);
        assert!(is_wrong_last_sequence(&update));
        let numbered =
            PublishError::with_source(PublishErrorKind::WrongLastSequence, api_error(10071));
        assert!(is_wrong_last_sequence(&numbered));
    }

    #[test]
    fn other_failures_are_not_a_conflict() {
        let other = PublishError::with_source(PublishErrorKind::Other, api_error(10077));
        assert!(!is_wrong_last_sequence(&other));
        assert!(!is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::TimedOut
        )));
    }

    #[test]
    fn a_duplicate_still_being_stored_is_told_apart() {
        let in_process = PublishError::with_source(PublishErrorKind::Other, api_error(10158));
        assert!(is_duplicate_in_process(&in_process));
        assert!(!is_wrong_last_sequence(&in_process));
        let full = PublishError::with_source(PublishErrorKind::Other, api_error(10077));
        assert!(!is_duplicate_in_process(&full));
    }
}
