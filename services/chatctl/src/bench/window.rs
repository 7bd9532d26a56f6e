//! What a load run reads around its measured window besides its own counts,
//! the same way for every transport (the SSE comparison sets one against the
//! other): CPU and waits for a core per component, the workers' publish →
//! ack times, and the TCP connections the machine opened.

use std::collections::BTreeMap;

use super::cpu::{CpuSnapshot, RunQueue};
use super::publish_acks::PublishAcks;
use super::tcp_opens;

/// The readings taken as the window opens.
pub struct Window {
    cpu: CpuSnapshot,
    acks: Option<PublishAcks>,
    opens: Option<u64>,
}

/// What the window cost.
#[derive(Debug, Default)]
pub struct WindowCost {
    /// CPU seconds per component.
    pub cpu: BTreeMap<String, f64>,
    /// The components' waits for a core.
    pub run_queue: BTreeMap<String, RunQueue>,
    /// The workers' publish → ack times (`None`: not all were read).
    pub publish_acks: Option<PublishAcks>,
    /// TCP connections opened on the machine.
    pub connections_opened: Option<u64>,
}

impl Window {
    /// Read just before the window opens: the workers' metrics (HTTP) first,
    /// the CPU last, nearest the window.
    pub async fn open(worker_metrics: &[String]) -> Self {
        let acks = PublishAcks::read(worker_metrics).await;
        let opens = tcp_opens::read();
        Self {
            cpu: CpuSnapshot::take(),
            acks,
            opens,
        }
    }

    /// Read just after it closes, in the reverse order.
    pub async fn close(self, worker_metrics: &[String]) -> WindowCost {
        let cpu = CpuSnapshot::take();
        let opens = tcp_opens::read();
        let acks = PublishAcks::read(worker_metrics).await;
        WindowCost {
            cpu: cpu.since(&self.cpu),
            run_queue: cpu.run_queue_since(&self.cpu),
            publish_acks: acks
                .zip(self.acks)
                .map(|(after, before)| after.since(before)),
            connections_opened: tcp_opens::since(opens, self.opens),
        }
    }
}
