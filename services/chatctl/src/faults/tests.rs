use super::*;

fn plan() -> FaultPlan {
    FaultPlan {
        count: 8,
        kinds: parse_kinds("drop,gateway,worker,nats").unwrap(),
        start: Duration::from_secs(2),
        end: Duration::from_secs(22),
        gateways: 3,
        workers: 3,
        nodes: 0,
        sessions: 50,
        drop_share: 0.1,
        gateway_hosts: false,
    }
}

fn cluster_plan() -> FaultPlan {
    FaultPlan {
        count: 21,
        kinds: FaultKind::CLUSTER.to_vec(),
        nodes: 3,
        ..plan()
    }
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let a = Schedule::generate(42, &plan());
    assert_eq!(a, Schedule::generate(42, &plan()));
    assert_ne!(a, Schedule::generate(43, &plan()));
    assert_eq!(a.to_string(), Schedule::generate(42, &plan()).to_string());
}

#[test]
fn every_kind_appears_spread_over_the_window() {
    let s = Schedule::generate(7, &plan());
    assert_eq!(s.faults.len(), 8);
    for kind in FaultKind::ALL
        .iter()
        .filter(|k| !k.needs_cluster() && !k.is_grey())
    {
        assert_eq!(s.faults.iter().filter(|f| f.kind == *kind).count(), 2);
    }
    let times: Vec<Duration> = s.faults.iter().map(|f| f.at).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(times[0] >= Duration::from_secs(2));
    assert!(*times.last().unwrap() <= Duration::from_secs(22));
    for f in &s.faults {
        match f.kind {
            FaultKind::Drop => {
                assert_eq!(f.targets.len(), 5);
                assert!(f.targets.iter().all(|t| *t < 50));
            }
            FaultKind::Gateway | FaultKind::Worker => {
                assert!(f.targets.len() == 1 && f.targets[0] < 3)
            }
            FaultKind::Nats => assert!(f.targets.is_empty()),
            other => panic!("{other} without a cluster"),
        }
    }
}

#[test]
fn a_cluster_schedule_kills_each_streams_leader_in_turn_and_no_single_server() {
    let s = Schedule::generate(11, &cluster_plan());
    assert_eq!(s.faults.len(), 21);
    assert!(s.faults.iter().all(|f| f.kind != FaultKind::Nats));
    for kind in FaultKind::CLUSTER {
        assert!(s.faults.iter().any(|f| f.kind == kind), "{kind} missing");
    }
    let leaders: Vec<usize> = s
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::NodeKill)
        .map(|f| f.targets[0])
        .collect();
    assert_eq!(leaders, [0, 1, 2]);
    for f in &s.faults {
        if f.kind == FaultKind::Partition {
            assert!(f.targets.len() == 1 && f.targets[0] < 3);
        }
    }
    let text = s.to_string();
    assert!(text.contains("leading CHAT_EVENTS"), "{text}");
    assert!(text.contains("leading KV_chat_sessions"), "{text}");
}

#[test]
fn grey_faults_take_turns_and_stay_within_their_ranges() {
    let mut p = cluster_plan();
    p.kinds = parse_kinds("pause,disk-full,lossy-link").unwrap();
    p.count = 12;
    p.gateway_hosts = true;
    let s = Schedule::generate(3, &p);
    assert_eq!(s, Schedule::generate(3, &p));
    let paused: Vec<Process> = s
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::Pause)
        .filter_map(|f| f.process)
        .collect();
    let mut seen = paused.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            Process::Leader,
            Process::Follower,
            Process::Gateway,
            Process::Worker
        ],
        "{paused:?}"
    );
    for f in &s.faults {
        let hold = f.hold.unwrap();
        let secs = |r: &std::ops::RangeInclusive<u64>| {
            Duration::from_secs(*r.start())..Duration::from_secs(r.end() + 1)
        };
        match f.kind {
            FaultKind::Pause => assert!(secs(&PAUSE_SECS).contains(&hold)),
            FaultKind::DiskFull => {
                assert!(secs(&DISK_FULL_SECS).contains(&hold));
                assert_eq!(f.process, Some(Process::Node));
                assert!(f.targets[0] < 3);
            }
            FaultKind::LossyLink => {
                assert!(secs(&LOSSY_SECS).contains(&hold));
                assert!(LOSS_PERCENT.contains(&f.loss_percent.unwrap()));
                assert!(matches!(f.process, Some(Process::Node | Process::Gateway)));
            }
            other => panic!("{other} was not asked for"),
        }
    }
    let text = s.to_string();
    assert!(text.contains("SIGSTOP the CHAT_EVENTS leader"), "{text}");
    assert!(text.contains("% of the packets of"), "{text}");
    // One nats-server: the grey kinds hit it, never a node.
    let mut single = plan();
    single.kinds = p.kinds.clone();
    let s = Schedule::generate(3, &single);
    assert!(s.faults.iter().all(|f| !matches!(
        f.process,
        Some(Process::Leader | Process::Follower | Process::Node)
    )));
    assert!(s.faults.iter().any(|f| f.process == Some(Process::Nats)));
}

#[test]
fn kinds_parse_and_unhittable_kinds_are_left_out() {
    assert_eq!(
        parse_kinds("drop, gateway,drop").unwrap(),
        vec![FaultKind::Drop, FaultKind::Gateway]
    );
    assert!(parse_kinds("drop,fire").is_err());
    let mut p = plan();
    p.workers = 0;
    let s = Schedule::generate(1, &p);
    assert!(s.faults.iter().all(|f| f.kind != FaultKind::Worker));
    assert_eq!(s.faults.len(), 8);
}
