//! The lifecycles of a node's actors, in one place: the node actor (swarm, discovery), the
//! state actor (document), the supervisor (services, when it runs any) and the advertiser
//! (their LAN records, with the supervisor). Started by [`super::start_node`] (state, then
//! supervisor and advertiser, then node); stopped here in the one order that loses nothing:
//!
//! 1. the supervisor stops the services (reverse dependency order) while the mesh can still
//!    hear their final states;
//! 2. the advertiser withdraws the services it advertised on the LAN (most already went as
//!    their copies stopped; with `--leave-services-running` all of them: no agent answers for
//!    them any more);
//! 3. the node actor records the leave in the document, tells peers, and sends mDNS goodbyes;
//! 4. the state actor saves its sync states and ends.
//!
//! It does not own the discovery source: the node actor starts and stops that itself.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The running actors of one node, and how to stop each.
pub(crate) struct Children {
    pub(super) node_shutdown: CancellationToken,
    pub(super) node_task: Option<JoinHandle<()>>,
    pub(super) state_shutdown: CancellationToken,
    pub(super) state_task: Option<JoinHandle<()>>,
    pub(super) supervisor_shutdown: CancellationToken,
    pub(super) supervisor_task: Option<JoinHandle<()>>,
    pub(super) advertiser_shutdown: CancellationToken,
    pub(super) advertiser_task: Option<JoinHandle<()>>,
}

impl Children {
    /// Graceful stop, in the order of the module doc; waits for each actor to end.
    pub(super) async fn shutdown(mut self) {
        self.supervisor_shutdown.cancel();
        if let Some(task) = self.supervisor_task.take() {
            let _ = task.await;
        }
        self.advertiser_shutdown.cancel();
        if let Some(task) = self.advertiser_task.take() {
            let _ = task.await;
        }
        self.node_shutdown.cancel();
        if let Some(task) = self.node_task.take() {
            let _ = task.await;
        }
        self.state_shutdown.cancel();
        if let Some(task) = self.state_task.take() {
            let _ = task.await;
        }
    }

    /// Ends every actor at once, telling no one (a crash, for tests). Services keep running,
    /// as they would after a real crash.
    pub(super) fn abort(mut self) {
        for task in [
            self.node_task.take(),
            self.supervisor_task.take(),
            self.advertiser_task.take(),
            self.state_task.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}
