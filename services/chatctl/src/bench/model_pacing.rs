//! What the demo model costs by itself at a paced load. In the bench the
//! workers run the demo model: it is the load generator, and its timers
//! (one wake-up per token per stream) are part of the worker's CPU per
//! token. Here the same streams at the same pace run in this process alone,
//! no NATS, nothing published, on a runtime like the worker's, and the
//! process's CPU over a window is divided by the tokens yielded in it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use worker::backends::demo::{DemoBackend, DemoConfig};
use worker::backends::{Generation, ModelBackend, ModelOutput};

use super::cpu::CpuSnapshot;

/// The demo model alone over one window.
#[derive(Clone, Copy, Debug)]
pub struct ModelPacing {
    /// Tokens (answer and reasoning) yielded in the window.
    pub tokens: u64,
    /// This process's CPU seconds in the window.
    pub cpu_secs: f64,
}

impl ModelPacing {
    pub fn us_per_token(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.cpu_secs * 1e6 / self.tokens as f64)
    }
}

/// Runs `streams` demo answers of `answer_tokens` at `tokens_per_sec` each,
/// one after another per stream, on a 2-thread runtime of its own (the
/// worker's), and measures `window` after a one-second start. Blocks: call
/// it from `spawn_blocking`, while nothing else runs in this process.
pub fn measure(
    streams: usize,
    tokens_per_sec: f64,
    answer_tokens: usize,
    window: Duration,
) -> anyhow::Result<ModelPacing> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()?;
    let model = Arc::new(DemoBackend::new(DemoConfig {
        tokens_per_sec,
        first_token: Duration::ZERO,
        answer_tokens,
        reasoning_tokens: 0,
        models: Vec::new(),
        // As the bench's workers: every token carries its time.
        stamp_tokens: true,
    }));
    let tokens = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let interval = Duration::from_secs_f64(1.0 / tokens_per_sec.max(0.001));
        let mut tasks = Vec::with_capacity(streams);
        for i in 0..streams {
            let (model, tokens, stop) = (model.clone(), tokens.clone(), stop.clone());
            // Spread over one token interval, as users' streams are.
            let offset = interval.mul_f64(i as f64 / streams.max(1) as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut answer = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    answer += 1;
                    let mut output = model.generate(Generation {
                        prompt: format!("stream {i} answer {answer}"),
                        history: Vec::new(),
                        model: None,
                    });
                    while let Some(item) = output.next().await {
                        if let Ok(ModelOutput::Token(_) | ModelOutput::Reasoning(_)) = item {
                            tokens.fetch_add(1, Ordering::Relaxed);
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (cpu_before, tokens_before) =
            (CpuSnapshot::of_pids(&[]), tokens.load(Ordering::Relaxed));
        tokio::time::sleep(window).await;
        let cpu = CpuSnapshot::of_pids(&[]).since(&cpu_before);
        let yielded = tokens.load(Ordering::Relaxed) - tokens_before;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        Ok(ModelPacing {
            tokens: yielded,
            cpu_secs: cpu.values().sum(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_alone_yields_at_its_pace_and_costs_cpu() {
        let pacing = measure(20, 50.0, 150, Duration::from_secs(2)).expect("measured");
        // 20 streams × 50 tokens/s × 2 s = 2,000 tokens, give or take the
        // timers' rounding and a loaded machine.
        assert!(
            (1_500..=2_100).contains(&pacing.tokens),
            "{} tokens in 2 s",
            pacing.tokens
        );
        // CPU comes from /proc in 10 ms ticks: two seconds of 20 streams'
        // timers may cost less than one.
        assert!(
            pacing
                .us_per_token()
                .is_some_and(|us| us.is_finite() && us >= 0.0),
            "{pacing:?}"
        );
    }
}
