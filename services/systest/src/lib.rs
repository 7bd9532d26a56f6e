//! Tests of the whole system run as separate processes (see `tests/`):
//! one trace across gateway → work-queue → worker → model, metrics that
//! move by the right amounts, and the operator files (dashboard, alert
//! rules) naming only metrics that exist. The crate has no code of its own.
