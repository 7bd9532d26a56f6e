//! The workers' publish → JetStream ack time over a window, from their
//! `chat_worker_chunk_publish_seconds` (its sum and count). The workers'
//! adaptive window is a multiple of its smoothed value, so a token's wait in
//! a worker follows it: a slower path to NATS means larger, later chunks.

use worker::metrics::CHUNK_PUBLISH;

/// Acks counted so far, summed over the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PublishAcks {
    /// Seconds from publish to ack, summed over the acks.
    pub secs: f64,
    pub count: f64,
}

impl PublishAcks {
    /// Reads every worker's metrics (`None` unless all of them answer).
    pub async fn read(urls: &[String]) -> Option<Self> {
        let mut total = Self::default();
        for text in super::scrape::every(urls).await? {
            total.add(Self::parse(&text));
        }
        Some(total)
    }

    /// The acks between `earlier` and this reading.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            secs: (self.secs - earlier.secs).max(0.0),
            count: (self.count - earlier.count).max(0.0),
        }
    }

    pub fn add(&mut self, other: Self) {
        self.secs += other.secs;
        self.count += other.count;
    }

    /// Mean publish → ack, ms.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.secs * 1e3 / self.count)
    }

    /// The histogram's `_sum` and `_count` lines, labelled or not.
    fn parse(text: &str) -> Self {
        let mut acks = Self::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(CHUNK_PUBLISH) else {
                continue;
            };
            let (slot, rest) = if let Some(rest) = rest.strip_prefix("_sum") {
                (&mut acks.secs, rest)
            } else if let Some(rest) = rest.strip_prefix("_count") {
                (&mut acks.count, rest)
            } else {
                continue;
            };
            let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(value), true) = (value, rest.starts_with([' ', '{'])) {
                *slot += value;
            }
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_and_count_of_the_publish_histogram_are_read() {
        let text = format!(
            "# TYPE {CHUNK_PUBLISH} summary\n\
             {CHUNK_PUBLISH}{{quantile=\"0.5\"}} 0.004\n\
             {CHUNK_PUBLISH}_sum 1.5\n\
             {CHUNK_PUBLISH}_count 300\n\
             {CHUNK_PUBLISH}_summed_elsewhere 7\n\
             chat_worker_jobs_total{{outcome=\"done\"}} 12\n"
        );
        let acks = PublishAcks::parse(&text);
        assert_eq!(
            acks,
            PublishAcks {
                secs: 1.5,
                count: 300.0
            }
        );
        assert_eq!(acks.mean_ms(), Some(5.0));
        let later = PublishAcks {
            secs: 2.5,
            count: 400.0,
        };
        assert_eq!(later.since(acks).mean_ms(), Some(10.0));
        assert_eq!(PublishAcks::default().mean_ms(), None);
    }
}
