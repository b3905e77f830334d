//! The node actor's request-response protocols: admission handshakes (`/mesh/auth`),
//! membership datagrams and leave notices (`/mesh/membership`), sync traffic between the swarm
//! and the state actor (`/mesh/sync`), and queries (`/mesh/query`). Each correlates requests
//! with their answers; the decisions stay in the cores ([`Admission`], [`Membership`]).

use super::*;

/// A query this node sent: who waits for the answer, and the request while it may still be
/// sent once more (after its connection closed under it, see `on_query_event`).
pub(super) struct OutboundQuery {
    pub(super) reply: oneshot::Sender<Result<QueryResponse, NodeError>>,
    pub(super) retry: Option<QueryRequest>,
}

impl NodeActor {
    pub(super) fn on_sync_out(&mut self, out: SyncOut) {
        match out {
            SyncOut::Request(peer, request) => {
                if !self.admission.is_admitted(&peer) || !self.connections.contains_key(&peer) {
                    self.state.try_send(StateCommand::SendFailed {
                        peer,
                        reason: "not connected and admitted".into(),
                    });
                    return;
                }
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.sync_requests.insert(id, peer);
            }
            SyncOut::Respond(token, response) => {
                if let Some(channel) = self.sync_pending.remove(&token) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
                }
            }
        }
    }

    pub(super) fn on_command(&mut self, command: NodeCommand) {
        match command {
            NodeCommand::RotateKey { reply } => {
                let _ = reply.send(self.rotate_key().map_err(NodeError::Key));
            }
            NodeCommand::Query {
                peer,
                request,
                reply,
            } => {
                if !self.admission.is_admitted(&peer)
                    || !self.connections.contains_key(&peer)
                    || self.removed.contains(&peer)
                {
                    let _ = reply.send(Err(NodeError::NotConnected { peer }));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .query
                    .send_request(&peer, request.clone());
                self.query_requests.insert(
                    id,
                    OutboundQuery {
                        reply,
                        retry: Some(request),
                    },
                );
            }
        }
    }

    pub(super) fn on_query_event(
        &mut self,
        ev: request_response::Event<QueryRequest, QueryResponse>,
    ) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let behaviour = &mut self.swarm.behaviour_mut().query;
                    // A removed node keeps its links a moment (so the removal reaches it):
                    // it is asked nothing and answered nothing in that time, above all no key.
                    if !self.admission.is_admitted(&peer) || self.removed.contains(&peer) {
                        self.stats.unadmitted_requests += 1;
                        let _ = behaviour.send_response(channel, QueryResponse::NotAdmitted);
                        return;
                    }
                    if self.query_pending.len() >= MAX_PENDING_QUERIES {
                        let _ = behaviour.send_response(
                            channel,
                            QueryResponse::Error("too many queries at once; retry".into()),
                        );
                        return;
                    }
                    if let QueryRequest::Rekey { key, generation } = request {
                        let answer = self.on_rekey(peer, &key, generation);
                        let behaviour = &mut self.swarm.behaviour_mut().query;
                        let _ = behaviour.send_response(channel, answer);
                        return;
                    }
                    let token = self.next_query_token;
                    self.next_query_token += 1;
                    self.query_pending.insert(token, channel);
                    let supervisor = self.supervisor.clone();
                    let answers = self.query_answers_tx.clone();
                    tokio::spawn(async move {
                        let answer =
                            query::answer(supervisor.as_ref(), request, MAX_REMOTE_WAIT).await;
                        let _ = answers.send((token, answer)).await;
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(q) = self.query_requests.remove(&request_id) {
                        let _ = q.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(q) = self.query_requests.remove(&request_id) else {
                    return;
                };
                // Two agents that dial each other at once hold two connections for a moment,
                // and each closes the one the higher id dialed: a query sent on that one fails
                // with ConnectionClosed while the peer is still connected. Sent again once.
                if matches!(error, request_response::OutboundFailure::ConnectionClosed)
                    && self.connections.contains_key(&peer)
                    && let Some(request) = q.retry
                {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .query
                        .send_request(&peer, request);
                    self.query_requests.insert(
                        id,
                        OutboundQuery {
                            reply: q.reply,
                            retry: None,
                        },
                    );
                    return;
                }
                let _ = q.reply.send(Err(NodeError::QueryFailed {
                    peer,
                    reason: error.to_string(),
                }));
            }
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn on_sync_event(&mut self, ev: request_response::Event<SyncRequest, SyncResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if !self.admission.is_admitted(&peer) {
                        self.stats.unadmitted_requests += 1;
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .send_response(channel, SyncResponse::NotAdmitted);
                        return;
                    }
                    if self.sync_pending.len() >= MAX_PENDING_SYNC {
                        // Dropping the channel fails the peer's request; it retries later.
                        return;
                    }
                    let token = self.next_sync_token;
                    self.next_sync_token += 1;
                    if self.state.try_send(StateCommand::Inbound {
                        peer,
                        token,
                        request,
                    }) {
                        self.sync_pending.insert(token, channel);
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.sync_requests.remove(&request_id);
                    self.state
                        .try_send(StateCommand::Response { peer, response });
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.sync_requests.remove(&request_id);
                tracing::debug!(%peer, %error, "sync request failed");
                self.state.try_send(StateCommand::SendFailed {
                    peer,
                    reason: format!("request failed: {error}"),
                });
            }
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn on_auth_event(
        &mut self,
        ev: request_response::Event<
            crate::wire::auth::AuthRequest<NodeInfo>,
            crate::wire::auth::AuthResponse<NodeInfo>,
        >,
        now: Instant,
    ) {
        let std_now = now.into_std();
        if let request_response::Event::Message {
            peer,
            connection_id,
            ..
        } = &ev
        {
            // The connection a handshake runs on is that incarnation's (see `tag_incarnation`).
            self.auth_connection.insert(*peer, *connection_id);
        }
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let info = self.local_info_for(&peer);
                    let (response, actions) =
                        self.admission
                            .on_request(peer, request, move || info, std_now);
                    if let Some(response) = response {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .auth
                            .send_response(channel, response);
                    }
                    self.apply_admission(actions, now);
                }
                request_response::Message::Response { response, .. } => {
                    let info = self.local_info_for(&peer);
                    let actions = self
                        .admission
                        .on_response(peer, response, move || info, std_now);
                    self.apply_admission(actions, now);
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "auth request failed");
                let unsupported = matches!(
                    error,
                    request_response::OutboundFailure::UnsupportedProtocols
                );
                let still_connected = self.connections.contains_key(&peer);
                let actions = self.admission.on_transport_failure(
                    peer,
                    unsupported,
                    still_connected,
                    std_now,
                );
                self.apply_admission(actions, now);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
                tracing::debug!(%peer, %error, "inbound auth failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn apply_admission(
        &mut self,
        actions: Vec<AdmissionAction<NodeInfo>>,
        now: Instant,
    ) {
        for action in actions {
            match action {
                AdmissionAction::Send(peer, req) => {
                    self.swarm.behaviour_mut().auth.send_request(&peer, req);
                }
                AdmissionAction::Admitted { peer, info } => {
                    let info = info.sanitized();
                    tracing::info!(%peer, name = %info.name, "peer admitted");
                    self.learn_addrs(peer, &info);
                    self.membership.on_admitted(peer, info.bump, now.into_std());
                    self.tag_incarnation(peer, info.bump);
                    self.state.peer_up(peer);
                    self.admitted_set.insert(peer);
                    self.nat_on_admitted(peer, &info, now);
                    self.infos.insert(peer, info);
                    self.rendezvous_on_admitted(peer, now);
                    self.dirty = true;
                }
                AdmissionAction::NotMember { peer, reason } => {
                    tracing::debug!(
                        %peer,
                        %reason,
                        "peer is not a member; its connection stays for rendezvous only"
                    );
                    self.rendezvous.on_not_member(&peer, now.into_std());
                }
                AdmissionAction::Outdated(peer) => {
                    tracing::info!(%peer, "peer holds the previous mesh key: handing it the current one");
                    self.hand_key(peer);
                }
                AdmissionAction::Reject {
                    peer,
                    reason,
                    backoff,
                } => {
                    tracing::warn!(
                        %peer,
                        %reason,
                        backoff_s = backoff.as_secs(),
                        "peer failed admission; disconnecting and refusing it for a while"
                    );
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    /// `mesh key rotate`: a new key, stored durably first, then used and handed to every
    /// admitted peer.
    fn rotate_key(&mut self) -> Result<KeyRotation, String> {
        let Some(dir) = self.data_dir.clone() else {
            return Err("this agent has no data dir to keep a new key in".to_string());
        };
        let rotated = self.admission.keyring().rotated();
        rotated
            .save(&dir)
            .map_err(|e| format!("the new key was not stored, nothing changed: {e}"))?;
        let (mesh_id, generation) = (rotated.current.mesh_id().to_string(), rotated.generation);
        self.use_keyring(rotated);
        tracing::info!(mesh = %mesh_id, generation, "mesh key rotated");
        let told = self.hand_key_to_all(None);
        Ok(KeyRotation {
            mesh_id,
            generation,
            told,
        })
    }

    /// Admits with `keys` from now on (stored already); the snapshot shows the new mesh id.
    fn use_keyring(&mut self, keys: crate::admission::Keyring) {
        self.admission.set_keyring(keys);
        self.dirty = true;
    }

    /// Sends the current key to `peer` (`/mesh/query/1` `Rekey`); its answer is not awaited.
    /// Never to a removed node.
    fn hand_key(&mut self, peer: PeerId) {
        if self.removed.contains(&peer) {
            return;
        }
        let keys = self.admission.keyring();
        let request = QueryRequest::Rekey {
            key: keys.current.to_hex(),
            generation: keys.generation,
        };
        self.swarm
            .behaviour_mut()
            .query
            .send_request(&peer, request);
    }

    /// Hands the current key to every admitted peer but `except`; returns them.
    fn hand_key_to_all(&mut self, except: Option<PeerId>) -> Vec<PeerId> {
        let peers: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|p| {
                self.admission.is_admitted(p) && !self.removed.contains(p) && Some(**p) != except
            })
            .copied()
            .collect();
        for peer in &peers {
            self.hand_key(*peer);
        }
        peers
    }

    /// A member handed us a key: taken when it is newer than ours (stored durably first),
    /// then passed on to the other admitted peers (who ignore it if they have it).
    fn on_rekey(&mut self, from: PeerId, key: &str, generation: u64) -> QueryResponse {
        let Ok(key) = key.parse::<crate::admission::MeshKey>() else {
            return QueryResponse::Error("a key is 64 hex characters".to_string());
        };
        let Some(newer) = self.admission.keyring().adopt(key, generation) else {
            return QueryResponse::Rekeyed { changed: false };
        };
        if let Some(dir) = &self.data_dir
            && let Err(e) = newer.save(dir)
        {
            tracing::error!(%from, error = %e, "cannot store the mesh key a member handed over; keeping the old one");
            return QueryResponse::Error(format!("cannot store the key: {e}"));
        }
        let mesh = newer.current.mesh_id();
        self.use_keyring(newer);
        tracing::info!(%from, %mesh, generation, "took the mesh key a member handed over (a rotation)");
        if let Some(supervisor) = &self.supervisor {
            supervisor.record_event(
                "-",
                "key-rotated",
                format!("mesh key of generation {generation} (mesh {mesh}) handed over by {from}"),
            );
        }
        self.hand_key_to_all(Some(from));
        QueryResponse::Rekeyed { changed: true }
    }

    /// Remembers an admitted peer's listen addresses as dial targets, so it is redialed after a
    /// disconnect even when discovery stays silent. Loopback addresses are kept only when we
    /// reach the peer over loopback (same host); unspecified ones never.
    pub(super) fn learn_addrs(&mut self, peer: PeerId, info: &NodeInfo) {
        let via_loopback = self
            .connections
            .get(&peer)
            .is_some_and(|c| c.iter().any(|c| is_loopback(&c.remote)));
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter(|a| !is_unspecified(a) && (via_loopback || !is_loopback(a)))
            .collect();
        self.dials
            .on_listen_addrs(peer, addrs, Instant::now().into_std());
    }

    pub(super) fn on_membership_event(
        &mut self,
        ev: request_response::Event<MembershipRequest, MembershipResponse>,
        now: Instant,
    ) {
        let std_now = now.into_std();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = if !self.admission.is_admitted(&peer) {
                        self.stats.unadmitted_requests += 1;
                        MembershipResponse::NotAdmitted
                    } else {
                        match request {
                            MembershipRequest::Datagram(data) => {
                                self.membership.on_datagram(peer, &data, std_now)
                            }
                            MembershipRequest::Leave {
                                peer: relayed,
                                bump,
                            } => self.on_leave_notice(peer, relayed, bump, now),
                        }
                        MembershipResponse::Ack
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .membership
                        .send_response(channel, response);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let _ = response;
                    self.leave_pending.remove(&request_id);
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                self.leave_pending.remove(&request_id);
                tracing::trace!(%error, "membership request failed");
            }
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A leave notice, first-hand (`relayed` is `None`) or relayed by a member. News is
    /// relayed once to every other admitted peer.
    pub(super) fn on_leave_notice(
        &mut self,
        from: PeerId,
        relayed: Option<Vec<u8>>,
        bump: u64,
        now: Instant,
    ) {
        let leaver = match relayed {
            None => from,
            Some(bytes) => match PeerId::from_bytes(&bytes) {
                Ok(p) => p,
                Err(_) => {
                    self.stats.malformed_inbound += 1;
                    return;
                }
            },
        };
        if !self
            .membership
            .on_leave_notice(from, leaver, bump, now.into_std())
        {
            return;
        }
        tracing::info!(peer = %leaver, via = %from, "peer is leaving");
        self.dials
            .on_membership(&leaver, PeerState::Left, now.into_std());
        let others: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|p| **p != from && **p != leaver && self.admission.is_admitted(p))
            .copied()
            .collect();
        for p in others {
            self.swarm.behaviour_mut().membership.send_request(
                &p,
                MembershipRequest::Leave {
                    peer: Some(leaver.to_bytes()),
                    bump,
                },
            );
        }
    }

    /// Sends foca's datagrams on the peer's membership stream; as requests of
    /// `/mesh/membership/1` to a peer without a working stream, and while leaving (so that the
    /// last ones are acknowledged before the agent exits).
    pub(super) fn flush_membership(&mut self) {
        let sends: Vec<_> = self.membership.poll_transmit().collect();
        for (peer, data) in sends {
            if !self.admission.is_admitted(&peer) || !self.connections.contains_key(&peer) {
                self.membership.count_undeliverable();
                continue;
            }
            if !self.leaving {
                match self.datagrams.send(peer, data.clone()) {
                    Ok(()) => continue,
                    Err(datagrams::NotSent::Full) => {
                        self.membership.count_undeliverable();
                        continue;
                    }
                    Err(datagrams::NotSent::NoStream) => {}
                }
            }
            self.swarm
                .behaviour_mut()
                .membership
                .send_request(&peer, MembershipRequest::Datagram(data.to_vec()));
        }
    }

    /// A frame from a peer's membership stream: processed like a datagram request, if the
    /// peer is admitted.
    pub(super) fn on_stream_datagram(&mut self, inbound: datagrams::Inbound) {
        match inbound {
            datagrams::Inbound::Datagram(peer, data) => {
                if !self.admission.is_admitted(&peer) {
                    self.stats.unadmitted_requests += 1;
                    return;
                }
                self.membership
                    .on_datagram(peer, &data, Instant::now().into_std());
            }
            datagrams::Inbound::Malformed(peer) => {
                tracing::debug!(%peer, "malformed membership stream frame; stream closed");
                self.stats.malformed_inbound += 1;
            }
        }
    }
}
