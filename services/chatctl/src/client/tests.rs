use super::*;

#[test]
fn log_answers_questions_about_instants() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let id = MessageId::new();
    let log = SessionLog {
        received: vec![Received {
            at: at(30),
            event: SequencedEvent {
                seq: 1,
                event: protocol::Event::Cancelled { message_id: id },
            },
        }],
        asked: vec![Asked {
            message_id: id,
            prompt: "p".into(),
            sent_at: at(10),
            finished_at: Some(at(30)),
        }],
        attachments: vec![
            Attachment {
                at: at(0),
                node: "gw-0".into(),
            },
            Attachment {
                at: at(20),
                node: "gw-1".into(),
            },
        ],
        ..Default::default()
    };
    assert_eq!(log.node_at(at(5)), Some("gw-0"));
    assert_eq!(log.node_at(at(25)), Some("gw-1"));
    assert!(!log.in_flight_at(at(5)));
    assert!(log.in_flight_at(at(15)));
    assert!(!log.in_flight_at(at(31)));
    assert_eq!(log.first_event_after(at(12)), Some(at(30)));
    assert_eq!(log.first_event_after(at(30)), None);
}
