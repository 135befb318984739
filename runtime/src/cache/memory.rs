//! The in-memory cache: loaded executables by key, least recently used out first.

use crate::executable::Executable;
use std::collections::HashMap;
use std::sync::Arc;

/// A bounded map from key to loaded executable.
pub(crate) struct MemoryCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (Arc<Executable>, u64)>,
}

impl MemoryCache {
    pub fn new(capacity: usize) -> Self {
        MemoryCache { capacity, tick: 0, entries: HashMap::new() }
    }

    pub fn get(&mut self, key: &str) -> Option<Arc<Executable>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(exe, used)| {
            *used = tick;
            exe.clone()
        })
    }

    pub fn insert(&mut self, key: String, exe: Arc<Executable>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        self.entries.insert(key, (exe, self.tick));
        while self.entries.len() > self.capacity {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
