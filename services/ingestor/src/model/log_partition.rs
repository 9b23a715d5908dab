//! A log's partition (a Kafka topic partition) and what a consumer knows of it: named here, at
//! the bottom, because the source, the metrics and the status all speak of it.

use std::sync::Arc;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A partition as one consumer holds it, for metrics and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// Which partition.
    pub key: PartitionKey,
    /// Where its next range starts (`None` before the first message of a partition with no
    /// stored offset).
    pub position: Option<i64>,
    /// Messages received and not yet loaded.
    pub buffered: usize,
    /// Messages the broker holds past the position, when known.
    pub lag: Option<i64>,
    /// Paused for backpressure.
    pub paused: bool,
}
