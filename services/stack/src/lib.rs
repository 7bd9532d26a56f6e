//! Real processes of the system, started and stopped for tests and tools:
//! a nats-server with JetStream in a temporary store on a free loopback port
//! ([`nats::NatsServer`]), and (in [`processes`]) gateways, workers and Nginx.
//! Everything started here is killed when its handle drops.

pub mod nats;
pub mod otlp;
pub mod processes;
