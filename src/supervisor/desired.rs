//! Following the document, sans-IO: which services are placed on this node and accepted, what
//! the mesh wants of each (running or stopped), which operator requests are new, and the
//! published states of dependencies placed on other nodes, turned into supervisor actions.
//!
//! Inputs: the state snapshot's [`View`] (records and parsed specs), this node's
//! [`FollowRules`], `now`. Output: [`Followed`] (actions to carry out, services refused with the
//! reason, specs newly found invalid). It remembers between documents only what makes each
//! decision happen once: the desired state last applied, the operator requests handled and
//! the remote states already passed on.
//!
//! Operator requests are told apart by their [`RequestStamp`], compared for equality with the
//! last one handled; never by comparing the requester's clock with this node's. Does not own
//! writing the document (the actor publishes refusals and instances) nor the run file (the
//! actor persists [`Supervisor::handled_requests`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::accept::{self, Placed};
use super::{FollowRules, Followed, RequestStamp, ServiceState, Supervisor, SupervisorEvent};
use crate::identity::NodeId;
use crate::services::{self, View};
use crate::state::{Desired, OperatorRequest, ServiceRecord};

impl Supervisor {
    /// Takes the requests handled before this start (the run file's), then marks every
    /// request of `view` as handled: what was asked before this start is history, not an
    /// order. Services the first document does not show keep the run file's stamp, so a
    /// request handled by the previous run is not replayed when it arrives late (a document
    /// recovered from peers, a slow first sync).
    pub fn start_following(&mut self, view: View<'_>, handled: BTreeMap<String, RequestStamp>) {
        self.document.handled = handled;
        for (name, record) in &view.state.services {
            if let Some(stamp) = RequestStamp::of(record) {
                self.document.handled.insert(name.clone(), stamp);
            }
        }
    }

    /// The last operator request handled per service (for the run file).
    pub fn handled_requests(&self) -> &BTreeMap<String, RequestStamp> {
        &self.document.handled
    }

    /// Follows a new version of the document: placement, desired states, operator requests
    /// (each once) and the states of dependencies on other nodes.
    pub fn follow_document(
        &mut self,
        now: Instant,
        view: View<'_>,
        rules: &FollowRules<'_>,
    ) -> Followed {
        let mut followed = Followed::default();
        let state = view.state;
        let who = |id: &NodeId| state.node_name(id);
        // Placed here, with the spec parsed once in the snapshot.
        let mut placed = Vec::new();
        let mut wanted: BTreeMap<&str, &ServiceRecord> = BTreeMap::new();
        for (name, record) in &state.services {
            if record.is_removed() {
                continue;
            }
            if let Some(reason) = view.specs.error(name) {
                if self
                    .document
                    .invalid
                    .insert(name.clone(), record.updated_at_ms)
                    != Some(record.updated_at_ms)
                {
                    followed.invalid.push((name.clone(), reason.to_string()));
                }
                continue;
            }
            let Some(spec) = view.specs.get(name) else {
                continue;
            };
            if !rules.runs_here.contains(name) {
                continue;
            }
            wanted.insert(name, record);
            // Documents older than `added_by` name only the last writer.
            let added_by = record.added_by.as_ref().unwrap_or(&record.updated_by);
            placed.push(Placed {
                spec: spec.clone(),
                added_by: Some(added_by.to_string()),
                added_by_name: who(added_by),
            });
        }
        self.document
            .invalid
            .retain(|name, _| state.services.contains_key(name));
        let running: BTreeSet<String> = self
            .statuses()
            .into_iter()
            .filter(|s| s.pid.is_some())
            .map(|s| s.service)
            .collect();
        let screened = accept::screen(
            placed,
            rules.accept_services,
            rules.node_id,
            rules.max_services,
            &running,
            rules.account_error,
        );
        wanted.retain(|name, _| !screened.refused.contains_key(*name));
        followed.refused = screened.refused;
        // Desired `stopped` must be known before the specs are applied, or a service added
        // as stopped would spawn once.
        for (name, record) in &wanted {
            if record.desired == Desired::Stopped
                && self.document.desired.get(*name) != Some(&Desired::Stopped)
            {
                let reason = format!("stopped by request (from {})", who(&record.updated_by));
                self.request_stop(name, reason);
            }
        }
        match self.apply_specs(now, screened.accepted) {
            Ok(actions) => followed.actions = actions,
            Err(e) => {
                followed.rejected = Some(e);
                return followed;
            }
        }
        let mut events = Vec::new();
        for (name, record) in &wanted {
            let before = self.document.desired.get(*name);
            if record.desired == Desired::Running && before == Some(&Desired::Stopped) {
                events.push(SupervisorEvent::Start {
                    service: name.to_string(),
                    reason: format!("started by request (from {})", who(&record.updated_by)),
                });
            }
        }
        self.document.desired = wanted
            .iter()
            .map(|(name, record)| (name.to_string(), record.desired))
            .collect();
        // Operator requests, each once: a stamp other than the last one handled is new.
        for (name, record) in &wanted {
            let (Some(request), Some(stamp)) = (record.request, RequestStamp::of(record)) else {
                continue;
            };
            if self.document.handled.get(*name) == Some(&stamp) {
                continue;
            }
            self.document.handled.insert(name.to_string(), stamp);
            let service = name.to_string();
            let reason = format!("{request} requested (from {})", who(&record.updated_by));
            events.push(match request {
                OperatorRequest::Restart => SupervisorEvent::Restart { service, reason },
                OperatorRequest::Start => SupervisorEvent::Start { service, reason },
            });
        }
        self.document
            .handled
            .retain(|name, _| state.services.contains_key(name));
        // Dependencies placed on other nodes: their published state, when it changes.
        let mut remote = BTreeMap::new();
        for spec in self.specs.values() {
            for dependency in &spec.after {
                if self.specs.contains_key(dependency) {
                    continue;
                }
                let published =
                    services::published_state(view, dependency).and_then(ServiceState::published);
                if let Some(published) = published
                    && self.document.remote_sent.get(dependency) != Some(&published)
                {
                    remote.insert(dependency.clone(), published);
                }
            }
        }
        for (service, state) in remote {
            self.document.remote_sent.insert(service.clone(), state);
            events.push(SupervisorEvent::RemoteState { service, state });
        }
        for event in events {
            // Every event names an accepted service; the only refusal left is a shutdown
            // under way, when nothing more starts anyway.
            if let Ok(actions) = self.on_event(now, event) {
                followed.actions.extend(actions);
            }
        }
        followed
    }
}
