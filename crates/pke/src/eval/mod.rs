//! Provides evaluation: judges validated on human labels, metric functions, and the per-model report.

pub mod charts;
pub mod embed;
pub mod harm;
pub mod judge;
pub mod metrics;
pub mod report;
