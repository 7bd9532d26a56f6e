//! The CPU rows of a load: each process's CPU of the measured window per
//! delivered token or chunk.

use super::super::load::LoadOutcome;
use super::super::report::Row;

/// CPU per delivered token, per process, in the measured window: what a
/// paced load costs each process for what its users get.
pub(super) fn cpu_token_row(outcome: &LoadOutcome, run: &str) -> Option<Row> {
    cpu_per_unit_row(outcome, outcome.measured_tokens, "token", run)
}

/// CPU per delivered chunk, per component, in the measured window: where
/// the end-to-end rate goes on a machine whose cores everything shares.
pub(super) fn cpu_row(outcome: &LoadOutcome, run: &str) -> Option<Row> {
    cpu_per_unit_row(outcome, outcome.measured_chunks, "chunk", run)
}

/// Each process's CPU of the measured window divided by `delivered` units.
fn cpu_per_unit_row(outcome: &LoadOutcome, delivered: u64, unit: &str, run: &str) -> Option<Row> {
    if delivered == 0 || outcome.cost.cpu.is_empty() {
        return None;
    }
    let per_unit_us = |secs: f64| secs * 1e6 / delivered as f64;
    let total: f64 = outcome.cost.cpu.values().sum();
    let mut values = vec![(format!("total_us_per_{unit}"), per_unit_us(total))];
    let mut parts = Vec::new();
    for (name, secs) in &outcome.cost.cpu {
        values.push((format!("{name}_us_per_{unit}"), per_unit_us(*secs)));
        parts.push(format!("{name} {:.1}", per_unit_us(*secs)));
    }
    Some(Row::text(
        format!("CPU per delivered {unit} ({run}), µs"),
        values,
        format!("{:.1} in all: {}", per_unit_us(total), parts.join(", ")),
    ))
}
