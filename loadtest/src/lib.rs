//! Load testing tools for Switchyard.
//!
//! - [`mock::openai`] — a mock OpenAI chat completions provider that speaks the real wire
//!   format (JSON, SSE chunks, tool calls, errors), deterministic and cheap enough to
//!   serve thousands of requests per second. Binary: `mock-provider`.
//! - [`loadgen`] — an open-loop load generator: requests leave at a fixed offered rate
//!   whatever the server does, and latency is measured from each request's scheduled
//!   send time into HdrHistograms. Binary: `loadgen`.
//! - Their runtime, logging and shutdown signal come from `switchyard-telemetry`.
//!
//! Both tools are libraries so tests start the same code the binaries run, in-process.

pub mod loadgen;
pub mod mock;
