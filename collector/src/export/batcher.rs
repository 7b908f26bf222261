//! What a lane does with a submitted batch before its sink sees it: pass it on as is
//! ([`PassThrough`]) or accumulate items by count and age ([`Accumulator`]).

use std::marker::PhantomData;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Batching, SignalBatch};
use crate::traces::proto::common::InstrumentationScope;
use crate::traces::proto::resource::Resource;

/// Turns the batches a lane receives into the batches its sink exports.
pub trait Batcher<B>: Default + Send + 'static {
    /// Whether a batch without items is dropped at submission (not queued, not counted).
    const SKIPS_EMPTY: bool;

    /// Takes in one submitted batch; batches due for export are pushed to `ready`.
    fn add(&mut self, batch: Arc<B>, batching: Batching, now: Instant, ready: &mut Vec<Arc<B>>);

    /// When the oldest waiting item arrived; `None` when nothing waits.
    fn oldest(&self) -> Option<Instant>;

    /// Everything waiting, as one batch; `None` when nothing waits.
    fn take(&mut self) -> Option<Arc<B>>;
}

/// Each submitted batch is one export call, as submitted (profiles).
#[derive(Debug)]
pub struct PassThrough<B>(PhantomData<fn() -> B>);

impl<B> Default for PassThrough<B> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<B: SignalBatch> Batcher<B> for PassThrough<B> {
    const SKIPS_EMPTY: bool = false;

    fn add(&mut self, batch: Arc<B>, _: Batching, _: Instant, ready: &mut Vec<Arc<B>>) {
        ready.push(batch);
    }

    fn oldest(&self) -> Option<Instant> {
        None
    }

    fn take(&mut self) -> Option<Arc<B>> {
        None
    }
}

/// A batch made of groups of items, one group per (resource, scope), as OTLP sends spans and
/// log records. The accessors let [`Accumulator`] merge and split any such batch.
pub trait Grouped: SignalBatch + Default {
    /// A span, a log record.
    type Item: Clone + Send + Sync + 'static;
    /// The items of one resource and scope.
    type Group: Send + Sync + 'static;

    /// The groups, in order.
    fn groups(&self) -> &[Self::Group];
    /// The groups, to add to.
    fn groups_mut(&mut self) -> &mut Vec<Self::Group>;
    /// The groups, taken out.
    fn into_groups(self) -> Vec<Self::Group>;
    /// An empty group of `resource` and `scope`.
    fn new_group(resource: Arc<Resource>, scope: Arc<InstrumentationScope>) -> Self::Group;
    /// A group's resource and scope.
    fn key(group: &Self::Group) -> (&Arc<Resource>, &Arc<InstrumentationScope>);
    /// A group's items.
    fn items(group: &Self::Group) -> &[Self::Item];
    /// A group's items, to add to.
    fn items_mut(group: &mut Self::Group) -> &mut Vec<Self::Item>;
    /// A group taken apart.
    fn into_parts(
        group: Self::Group,
    ) -> (Arc<Resource>, Arc<InstrumentationScope>, Vec<Self::Item>);
}

/// Items waiting in a lane for their export call, merged by resource and scope (spans, logs).
#[derive(Debug)]
pub struct Accumulator<B> {
    batch: B,
    items: usize,
    /// When the oldest waiting item arrived.
    since: Option<Instant>,
}

impl<B: Default> Default for Accumulator<B> {
    fn default() -> Self {
        Self {
            batch: B::default(),
            items: 0,
            since: None,
        }
    }
}

impl<B: Grouped> Batcher<B> for Accumulator<B> {
    const SKIPS_EMPTY: bool = true;

    /// Adds the items of `incoming`; every time `max_items` are waiting they are moved to
    /// `ready`, and with a zero `max_delay` the rest too. The items are moved out of the batch
    /// when this lane holds the only reference to it (one sink, the usual case) and cloned
    /// otherwise.
    fn add(&mut self, incoming: Arc<B>, batching: Batching, now: Instant, ready: &mut Vec<Arc<B>>) {
        let max = batching.max_items.max(1);
        match Arc::try_unwrap(incoming) {
            Ok(owned) if self.items == 0 && Self::adoptable(&owned, max) => {
                // Nothing waits: the batch is taken whole, its items not moved one by one.
                let count = owned.groups().iter().map(|g| B::items(g).len()).sum();
                if count >= max {
                    ready.push(Arc::new(owned));
                } else {
                    self.batch = owned;
                    self.items = count;
                    self.since = Some(now);
                }
            }
            Ok(owned) => {
                for group in owned.into_groups() {
                    let (resource, scope, items) = B::into_parts(group);
                    self.add_items(&resource, &scope, items.into_iter(), max, now, ready);
                }
            }
            Err(shared) => {
                for group in shared.groups() {
                    let (resource, scope) = B::key(group);
                    let items = B::items(group).iter().cloned();
                    self.add_items(resource, scope, items, max, now, ready);
                }
            }
        }
        if batching.max_delay.is_zero()
            && let Some(rest) = self.take()
        {
            ready.push(rest);
        }
    }

    fn oldest(&self) -> Option<Instant> {
        self.since
    }

    fn take(&mut self) -> Option<Arc<B>> {
        if self.items == 0 {
            return None;
        }
        self.items = 0;
        self.since = None;
        Some(Arc::new(std::mem::take(&mut self.batch)))
    }
}

impl<B: Grouped> Accumulator<B> {
    /// Whether `batch` is already what accumulating it into an empty accumulator would make:
    /// at most `max` items, no empty group, no two groups of the same resource and scope.
    fn adoptable(batch: &B, max: usize) -> bool {
        let groups = batch.groups();
        let mut count = 0usize;
        for (i, g) in groups.iter().enumerate() {
            let n = B::items(g).len();
            if n == 0 {
                return false;
            }
            count += n;
            let (r, s) = B::key(g);
            let same = |other: &B::Group| {
                let (r2, s2) = B::key(other);
                (Arc::ptr_eq(r, r2) || r == r2) && (Arc::ptr_eq(s, s2) || s == s2)
            };
            if groups.get(..i).unwrap_or_default().iter().any(same) {
                return false;
            }
        }
        count > 0 && count <= max
    }

    /// Adds the items of one (resource, scope), handing `max` at a time to `ready`.
    fn add_items(
        &mut self,
        resource: &Arc<Resource>,
        scope: &Arc<InstrumentationScope>,
        mut items: impl ExactSizeIterator<Item = B::Item>,
        max: usize,
        now: Instant,
        ready: &mut Vec<Arc<B>>,
    ) {
        while items.len() > 0 {
            let room = max.saturating_sub(self.items).max(1);
            let n = room.min(items.len());
            B::items_mut(self.slot(resource, scope)).extend(items.by_ref().take(n));
            self.items += n;
            self.since.get_or_insert(now);
            if self.items >= max
                && let Some(full) = self.take()
            {
                ready.push(full);
            }
        }
    }

    /// The group of (`resource`, `scope`), created if missing. Groups match when they share the
    /// allocation or are equal.
    fn slot(
        &mut self,
        resource: &Arc<Resource>,
        scope: &Arc<InstrumentationScope>,
    ) -> &mut B::Group {
        let groups = self.batch.groups_mut();
        let found = groups.iter().position(|g| {
            let (r, s) = B::key(g);
            (Arc::ptr_eq(r, resource) || r == resource) && (Arc::ptr_eq(s, scope) || s == scope)
        });
        let i = match found {
            Some(i) => i,
            None => {
                groups.push(B::new_group(resource.clone(), scope.clone()));
                groups.len() - 1
            }
        };
        &mut groups[i]
    }
}
