//! The in-memory index of one topic's messages: ids, where each lives in the journal, and what
//! delivery needs without reading it (publish time, ordering key).
//!
//! There is one log per topic, shared by all its subscriptions: a publish costs the same
//! whatever the number of subscriptions, and each subscription keeps only cursors into it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use super::wal::RecordPos;

/// One message of a topic.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Message id.
    pub id: u64,
    /// Where the message record is.
    pub pos: RecordPos,
    /// When it was published.
    pub publish_time: SystemTime,
    /// Ordering key (shared, since many messages carry the same one).
    pub ordering_key: Arc<str>,
}

/// A topic's messages, oldest first, ids strictly increasing.
#[derive(Debug, Default)]
pub struct TopicLog {
    entries: VecDeque<Entry>,
}

impl TopicLog {
    /// Appends a message; ids must increase.
    pub fn push(&mut self, entry: Entry) {
        debug_assert!(
            self.entries.back().is_none_or(|last| last.id < entry.id),
            "ids must increase"
        );
        self.entries.push_back(entry);
    }

    /// The first message with an id above `id`.
    pub fn first_after(&self, id: u64) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.id <= id);
        self.entries.get(idx)
    }

    /// The message with this id, if still kept.
    pub fn get(&self, id: u64) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.id < id);
        self.entries.get(idx).filter(|e| e.id == id)
    }

    /// Messages with ids above `after`, in order.
    pub fn iter_after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let idx = self.entries.partition_point(|e| e.id <= after);
        self.entries.range(idx..)
    }

    /// Number of messages with ids above `after`.
    pub fn count_after(&self, after: u64) -> usize {
        self.entries.len() - self.entries.partition_point(|e| e.id <= after)
    }

    /// The newest id, or `None` when empty.
    pub fn last_id(&self) -> Option<u64> {
        self.entries.back().map(|e| e.id)
    }

    /// The oldest message.
    pub fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// Removes the oldest message.
    pub fn pop_front(&mut self) -> Option<Entry> {
        self.entries.pop_front()
    }

    /// Number of messages kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            pos: RecordPos {
                segment: 0,
                offset: id,
            },
            publish_time: SystemTime::UNIX_EPOCH,
            ordering_key: Arc::from(""),
        }
    }

    #[test]
    fn finds_by_sparse_ids() {
        let mut log = TopicLog::default();
        for id in [3, 7, 8, 20] {
            log.push(entry(id));
        }
        assert_eq!(log.first_after(0).unwrap().id, 3);
        assert_eq!(log.first_after(3).unwrap().id, 7);
        assert_eq!(log.first_after(10).unwrap().id, 20);
        assert!(log.first_after(20).is_none());
        assert!(log.get(5).is_none());
        assert_eq!(log.get(8).unwrap().id, 8);
        assert_eq!(log.count_after(7), 2);
        assert_eq!(
            log.iter_after(7).map(|e| e.id).collect::<Vec<_>>(),
            vec![8, 20]
        );
        log.pop_front();
        assert_eq!(log.count_after(0), 3);
    }
}
