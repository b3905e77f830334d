//! The services domain: where a service runs, which node a name means, and the operator's
//! operations (add, remove, start, stop, restart) as pure functions from the current state to
//! the entries to write.
//!
//! Owns the rules every layer above the document shares:
//! - [`placement`]: the node a service runs on. Its target (the spec's `node`, a name or an
//!   id; the adding node when absent) is resolved to a [`NodeId`] once, when the service is
//!   added, and stored in its record (`node_id`); records written before that existed fall
//!   back to resolving the target by name, else the last writer.
//! - [`resolve_node`]: which node a name means (exact id, then name, then id tail).
//! - [`instance_key`]: the key of a service's instance on a node.
//! - the operations in [`ops`], which check a request against the whole mesh's services and
//!   return the [`EntryWrite`](crate::state::actor::EntryWrite)s to make, or one [`ServiceError`].
//!
//! Does not own: I/O (the API handlers decode, call and encode; the state actor writes), the
//! spec format ([`crate::supervisor::spec`]), nor what a node does with what is placed on it
//! (the supervisor). Spec of the records: `protocol/state-schema.md`.

pub mod ops;
mod view;

pub use ops::{
    AddOutcome, AddPlan, Added, Change, LocalCheck, ServiceAction, ServiceError, Writer, act, add,
    rebalance, remove, runs_on,
};
pub use view::*;

#[cfg(test)]
mod tests;
