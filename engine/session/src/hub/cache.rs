//! The hub's cache of loaded customer documents, least recently used first out.
//!
//! Owns: which documents stay in memory and which one leaves when the cache is
//! full, in O(log n) per use (a reconnect storm loads thousands of documents in a
//! row, and a scan of the whole cache per load made each load cost the cache's
//! size). Does not own: loading or saving (the hub asks storage).

use std::collections::{BTreeMap, HashMap};

use callsync_core::CustomerId;

/// Loaded documents, at most `capacity` of them.
pub(super) struct DocCache<D> {
    docs: HashMap<CustomerId, (D, u64)>,
    /// Each cached document by its last use; the first entry leaves first.
    by_use: BTreeMap<u64, CustomerId>,
    tick: u64,
    capacity: usize,
}

impl<D> DocCache<D> {
    /// An empty cache holding at most `capacity` documents (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            docs: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    /// Marks `id` as just used; false when it is not cached.
    pub(super) fn touch(&mut self, id: &CustomerId) -> bool {
        let Some((_, used)) = self.docs.get_mut(id) else {
            return false;
        };
        self.by_use.remove(used);
        self.tick += 1;
        *used = self.tick;
        self.by_use.insert(self.tick, id.clone());
        true
    }

    /// The cached document, without counting it as a use.
    pub(super) fn get_mut(&mut self, id: &CustomerId) -> Option<&mut D> {
        self.docs.get_mut(id).map(|(doc, _)| doc)
    }

    /// Caches `doc` as just used, first letting the least recently used document
    /// go if the cache is full.
    pub(super) fn insert(&mut self, id: CustomerId, doc: D) {
        self.remove(&id);
        if self.docs.len() >= self.capacity
            && let Some((_, oldest)) = self.by_use.pop_first()
        {
            self.docs.remove(&oldest);
        }
        self.tick += 1;
        self.by_use.insert(self.tick, id.clone());
        self.docs.insert(id, (doc, self.tick));
    }

    /// Drops `id` from the cache (the next use loads it from storage again).
    pub(super) fn remove(&mut self, id: &CustomerId) -> Option<D> {
        let (doc, used) = self.docs.remove(id)?;
        self.by_use.remove(&used);
        Some(doc)
    }

    /// Drops every document.
    pub(super) fn clear(&mut self) {
        self.docs.clear();
        self.by_use.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.docs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> CustomerId {
        CustomerId::new(format!("cus-{n}")).unwrap()
    }

    #[test]
    fn the_least_recently_used_document_leaves_first() {
        let mut cache = DocCache::new(2);
        cache.insert(id(1), "one");
        cache.insert(id(2), "two");
        assert!(cache.touch(&id(1)));
        cache.insert(id(3), "three");
        assert_eq!(cache.len(), 2);
        assert!(cache.get_mut(&id(2)).is_none(), "2 was used least recently");
        assert_eq!(cache.get_mut(&id(1)), Some(&mut "one"));
        assert_eq!(cache.get_mut(&id(3)), Some(&mut "three"));
    }

    #[test]
    fn removing_and_reinserting_keeps_one_entry_per_document() {
        let mut cache = DocCache::new(2);
        cache.insert(id(1), "one");
        cache.insert(id(1), "uno");
        cache.insert(id(2), "two");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get_mut(&id(1)), Some(&mut "uno"));
        assert_eq!(cache.remove(&id(1)), Some("uno"));
        assert!(!cache.touch(&id(1)));
        cache.insert(id(3), "three");
        cache.insert(id(4), "four");
        assert!(cache.get_mut(&id(2)).is_none());
        assert_eq!(cache.len(), 2);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
