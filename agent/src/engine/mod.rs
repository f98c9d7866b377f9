//! The agent's stream engine. **Invariant**: no IO, no clock reads, no randomness:
//! the same readings with the same arrival times and the same `advance` calls give
//! the same records, which crash recovery (ingest-log replay) and `replay` rely on.
//!
//! # Layout
//! - [`stream`]: the fluent API, `DataStream` → `KeyedStream` → `WindowedStream` → [`Job`].
//! - [`job`]: one compiled pipeline: operators, keys, windows, late data, series cap,
//!   checkpoint state. `[[pipeline]]` rules compile to the same [`Job`]
//!   ([`Job::from_config`]).
//! - [`tumbling`], [`sliding`], [`session`], [`count`]: one file per window kind.
//! - [`watermark`]: per-device clocks, idle detection, the global watermark.
//! - [`aggregate`]: accumulators (count … rate, reduce) and their merge.
//! - [`sketch`]: the quantile sketch (DDSketch, ≤ 0.5 % relative error).

pub mod aggregate;
pub mod count;
pub mod job;
pub mod session;
pub mod sketch;
pub mod sliding;
pub mod stream;
pub mod tumbling;
pub mod watermark;

pub use fieldline_common::config::pipeline::{
    Aggregate, KeyBy, LateConfig, LatePolicy, SeriesOverflow, WatermarkConfig, WatermarkStrategy,
    WindowSpec,
};
pub use job::{Job, JobState, JobStats};
pub use stream::{DataStream, KeyedStream, WindowedStream};

#[cfg(test)]
mod tests;
