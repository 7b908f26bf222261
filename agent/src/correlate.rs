//! Span ↔ profile correlation: which span each server request became.
//!
//! The kernel keeps, per thread, the request it serves (`ThreadRequest`: started by the read of
//! a server connection, ended by the write of the response; on an async runtime, also taken on
//! by the worker that reads the response of a call the request made) and tags every CPU sample
//! of the thread with it, so a sample's key names its request as (process id, `request_ns`: the
//! time of the read that started it, unique within a process whichever thread runs it). The span
//! builder sees the same pair on the request's DATA events and publishes here which span the
//! request became; the profiler's drain looks each tagged sample up and labels it with that span.
//!
//! Two bounded tiers, so a busy host cannot push out what the drain needs:
//! - *sampled*: requests the kernel reported as sampled (the response write carries the flag);
//!   few (at most the samples taken per interval), kept until the cap pushes out the oldest;
//! - *recent*: every other server request, the newest `max_recent` of them. Requests whose
//!   samples the kernel could not report (an async runtime that wrote the response from another
//!   thread, or read another connection's request first) are found here while the rate is low
//!   enough for them to still be present at the next drain.
//!
//! A tag that is in neither tier leaves its samples untagged (counted by the profiler); tagging
//! never changes the number of samples.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use foldhash::HashMap;

use loupe_collector::profile::SpanLabel;

/// A request as the kernel names it: the serving process's id and the `timestamp_ns` of the read
/// that started it.
pub type RequestTag = (u32, u64);

/// Sampled requests remembered at most.
pub const MAX_SAMPLED: usize = 16 * 1024;
/// Other recent server requests remembered at most.
pub const MAX_RECENT: usize = 16 * 1024;

/// The shared index; cheap to clone.
#[derive(Debug, Clone)]
pub struct SpanIndex {
    inner: Arc<Mutex<Tiers>>,
}

#[derive(Debug, Default)]
struct Tiers {
    sampled: Tier,
    recent: Tier,
}

/// A FIFO-bounded map.
#[derive(Debug, Default)]
struct Tier {
    map: HashMap<RequestTag, Arc<SpanLabel>>,
    order: VecDeque<RequestTag>,
    cap: usize,
}

impl Tier {
    fn with_cap(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            ..Self::default()
        }
    }

    fn insert(&mut self, tag: RequestTag, span: Arc<SpanLabel>) {
        if self.map.insert(tag, span).is_none() {
            self.order.push_back(tag);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// One server span the builder finished, as published.
#[derive(Debug, Clone)]
pub struct Published {
    pub tag: RequestTag,
    pub span: Arc<SpanLabel>,
    /// The kernel reported CPU samples tagged with this request.
    pub sampled: bool,
}

impl Default for SpanIndex {
    fn default() -> Self {
        Self::new(MAX_SAMPLED, MAX_RECENT)
    }
}

impl SpanIndex {
    pub fn new(max_sampled: usize, max_recent: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Tiers {
                sampled: Tier::with_cap(max_sampled),
                recent: Tier::with_cap(max_recent),
            })),
        }
    }

    /// Records finished server spans (one lock for the whole batch).
    pub fn publish(&self, spans: &mut Vec<Published>) {
        if spans.is_empty() {
            return;
        }
        let Ok(mut t) = self.inner.lock() else {
            spans.clear();
            return;
        };
        for p in spans.drain(..) {
            if p.sampled {
                t.sampled.insert(p.tag, p.span);
            } else {
                t.recent.insert(p.tag, p.span);
            }
        }
    }

    /// The span of each tag, `None` where unknown (one lock for all of them).
    pub fn lookup(&self, tags: &[RequestTag]) -> Vec<Option<Arc<SpanLabel>>> {
        let Ok(t) = self.inner.lock() else {
            return vec![None; tags.len()];
        };
        tags.iter()
            .map(|tag| {
                t.sampled
                    .map
                    .get(tag)
                    .or_else(|| t.recent.map.get(tag))
                    .cloned()
            })
            .collect()
    }

    /// Entries held (sampled, recent).
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|t| (t.sampled.map.len(), t.recent.map.len()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(n: u8) -> Arc<SpanLabel> {
        Arc::new(SpanLabel {
            trace_id: [n; 16],
            span_id: [n; 8],
            name: format!("GET /{n}").into(),
        })
    }

    #[test]
    fn finds_published_spans_and_forgets_the_oldest_past_each_cap() {
        let index = SpanIndex::new(2, 3);
        let mut batch = vec![
            Published {
                tag: (1, 10),
                span: label(1),
                sampled: true,
            },
            Published {
                tag: (1, 20),
                span: label(2),
                sampled: false,
            },
        ];
        index.publish(&mut batch);
        assert!(batch.is_empty());
        let got = index.lookup(&[(1, 10), (1, 20), (2, 10)]);
        assert_eq!(got[0].as_deref().map(|s| s.span_id), Some([1; 8]));
        assert_eq!(got[1].as_deref().map(|s| s.span_id), Some([2; 8]));
        assert!(got[2].is_none());

        // A flood of unsampled requests pushes out only unsampled ones.
        let mut flood: Vec<Published> = (0..10)
            .map(|i| Published {
                tag: (9, i),
                span: label(9),
                sampled: false,
            })
            .collect();
        index.publish(&mut flood);
        assert_eq!(index.len(), (1, 3));
        let got = index.lookup(&[(1, 10), (1, 20), (9, 9), (9, 6)]);
        assert!(got[0].is_some(), "the sampled request survives the flood");
        assert!(got[1].is_none(), "the oldest recent one is gone");
        assert!(got[2].is_some() && got[3].is_none());

        // The sampled tier has its own cap.
        let mut sampled: Vec<Published> = (0..3)
            .map(|i| Published {
                tag: (5, i),
                span: label(5),
                sampled: true,
            })
            .collect();
        index.publish(&mut sampled);
        assert_eq!(index.len(), (2, 3));
        assert!(index.lookup(&[(1, 10)])[0].is_none());
    }
}
