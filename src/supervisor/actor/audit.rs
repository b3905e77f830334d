//! The supervisor's audit trail in memory: a bounded ring shared between the actor (writer)
//! and its handles (readers), read a page at a time.

use std::collections::VecDeque;

use crate::state::now_ms;
use crate::wire::query::AuditRecord;

/// A page of the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<AuditRecord>,
    /// The newest sequence number given out.
    pub last_seq: u64,
    /// Events pushed out of the ring so far.
    pub dropped: u64,
}

/// The bounded audit ring: shared between the actor (writer) and handles (readers).
#[derive(Debug)]
pub(super) struct AuditRing {
    pub(super) capacity: usize,
    pub(super) events: VecDeque<AuditRecord>,
    pub(super) last_seq: u64,
    pub(super) dropped: u64,
}

impl AuditRing {
    pub(super) fn push(&mut self, service: &str, kind: &str, reason: String) -> u64 {
        self.last_seq += 1;
        if self.events.len() >= self.capacity.max(1) {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(AuditRecord {
            seq: self.last_seq,
            at_ms: now_ms(),
            service: service.to_string(),
            kind: kind.to_string(),
            reason,
        });
        self.last_seq
    }

    /// Events after `after`: the oldest `limit` of them when paging forward (`after` given),
    /// else the newest `limit`.
    pub(super) fn page(&self, after: Option<u64>, limit: usize) -> AuditPage {
        let events: Vec<AuditRecord> = match after {
            Some(after) => self
                .events
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            None => {
                let skip = self.events.len().saturating_sub(limit);
                self.events.iter().skip(skip).cloned().collect()
            }
        };
        AuditPage {
            events,
            last_seq: self.last_seq,
            dropped: self.dropped,
        }
    }
}
