//! Starting a node: binds its listeners (reporting bind errors), starts the state actor, the
//! supervisor and the advertiser, then the node actor itself ([`super::children`] stops them
//! in the reverse order).

use super::*;

/// [`super::start_node`].
pub(super) async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let local_peer = config.keypair.public().to_peer_id();
    let invites = SharedInvites::open(config.data_dir.as_deref())?;
    let admitted_set = transport::AdmittedSet::default();
    let options = transport::SwarmOptions {
        rendezvous_point: config.rendezvous_point.clone(),
        relay: config.relay_server.then(|| admitted_set.clone()),
    };
    let mut swarm =
        transport::build_swarm(config.keypair.clone(), config.transport.clone(), &options)?;
    let mut bound = 0;
    let mut quic_bound = false;
    for (i, addr) in config.listen.iter().enumerate() {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => {
                bound += 1;
                quic_bound |= transport::is_quic(addr);
            }
            Err(e) => {
                let reason = listen_error_reason(addr, &e);
                if config.listen_required.get(i).copied().unwrap_or(true) {
                    return Err(NodeError::Listen {
                        addr: addr.clone(),
                        reason,
                    });
                }
                tracing::warn!(%addr, error = %reason, "optional listener not bound");
            }
        }
    }
    if bound == 0 {
        return Err(NodeError::NoListener);
    }
    let now = Instant::now();
    let bump = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    // The key file's key, or what a rotation made of it since (`mesh.keyring`).
    let keyring =
        crate::admission::Keyring::load(config.data_dir.as_deref(), config.mesh_key.clone());
    let mesh_id = keyring.current.mesh_id();
    let (discovery_tx, discovery_rx) = mpsc::channel(DISCOVERY_CHANNEL);
    let shutdown = CancellationToken::new();
    let local = LocalSnapshot {
        peer_id: local_peer,
        name: config.name.clone(),
        mesh_id,
        listen_addrs: Vec::new(),
        hardware: config.hardware.clone(),
        started_at: now,
        bump,
        accept_services: config.supervisor.as_ref().map(|s| s.accept_services),
        relay_server: config.relay_server,
    };
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(NodeSnapshot {
        version: 0,
        taken_at: now,
        local,
        peers: Vec::new(),
        stats: NodeStats::default(),
    }));
    let (membership_tx, membership_rx) = watch::channel(MembershipSnapshot::new(now.into_std()));
    let (interfaces_tx, _) = watch::channel(0u64);
    let points: Vec<PeerId> = config.rendezvous.iter().filter_map(dial::peer_of).collect();
    let dials = DialPlanner::new(
        local_peer,
        &[config.static_peers.clone(), config.rendezvous.clone()].concat(),
        config.redial_max,
        now.into_std(),
    );
    let mut admission = Admission::with_keyring(keyring, local_peer);
    admission.set_lenient(
        points.iter().copied().collect(),
        config.rendezvous_point.as_ref().is_some_and(|p| p.open),
    );
    // Wait for the listeners to report their concrete addresses (port 0 resolved), so this
    // node's record, its first snapshot and its discovery announcement carry them: a QUIC one
    // when a QUIC listener is bound (mDNS advertises the QUIC port). Any other event (an early
    // incoming connection) is kept and handed to the actor once it exists.
    let deadline = now + Duration::from_secs(5);
    let mut listen_addrs: Vec<Multiaddr> = Vec::new();
    let mut early_events = Vec::new();
    while listen_addrs.is_empty() || (quic_bound && !listen_addrs.iter().any(transport::is_quic)) {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "listening");
                    listen_addrs.push(address);
                }
                other => early_events.push(other),
            },
            _ = tokio::time::sleep_until(deadline) => return Err(NodeError::NoListener),
        }
    }
    let state_shutdown = CancellationToken::new();
    let (state, sync_out, state_task) = spawn_state(
        StateConfig {
            local: local_peer,
            data_dir: config.data_dir.clone(),
            self_record: NodeRecord {
                name: config.name.as_str().into(),
                addrs: recorded_addrs(&listen_addrs, &config.external_addrs),
                hardware: NodeHardware::from(&config.hardware),
                version: crate::AGENT_VERSION.to_string(),
                ..Default::default()
            },
        },
        state_shutdown.clone(),
    )?;
    let supervisor_shutdown = CancellationToken::new();
    let (commands_tx, commands) = mpsc::channel(NODE_COMMAND_CHANNEL);
    let (supervisor, supervisor_task) = match config.supervisor.clone() {
        Some(mut sup) => {
            sup.node_id = local_peer.to_base58();
            sup.node_name = config.name.clone();
            let (handle, task) = spawn_supervisor(
                sup,
                state.clone(),
                membership_rx,
                peer_ask(commands_tx.clone()),
                supervisor_shutdown.clone(),
            );
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    // Only a node that runs services has copies to advertise.
    let advertiser_shutdown = CancellationToken::new();
    let advertiser_task = supervisor.as_ref().map(|_| {
        let mdns = match &config.discovery {
            DiscoveryMode::Mdns { ip_check_interval } => Some(*ip_check_interval),
            DiscoveryMode::Memory(_) | DiscoveryMode::Off => None,
        };
        let advertiser = AdvertiserConfig {
            node_id: local_peer.into(),
            node_name: config.name.clone(),
            peer_id: local_peer,
            mdns,
            interfaces: Some(interfaces_tx.subscribe()),
        };
        spawn_advertiser(advertiser, state.subscribe(), advertiser_shutdown.clone())
    });
    let (query_answers_tx, query_answers) = mpsc::channel(MAX_PENDING_QUERIES);
    let (join_answers_tx, join_answers) = mpsc::channel(MAX_PENDING_JOINS);
    let mut swarm_registry = prometheus_client::registry::Registry::default();
    let swarm_metrics = libp2p::metrics::Metrics::new(&mut swarm_registry);
    let swarm_registry = Arc::new(swarm_registry);
    let datagrams = datagrams::DatagramLinks::start(swarm.behaviour().streams.new_control());
    let mut actor = NodeActor {
        swarm_metrics,
        swarm,
        admission,
        membership: Membership::new(local_peer, bump, &config.membership, rand::random()),
        local_peer,
        name: config.name.clone(),
        hardware: config.hardware.clone(),
        bump,
        started_at: now,
        accept_services: config.supervisor.as_ref().map(|s| s.accept_services),
        listen_addrs,
        discovery_mode: config.discovery.clone(),
        discovery: DiscoverySource::NotStarted,
        discovery_tx,
        discovery_rx,
        interfaces_tx,
        infos: HashMap::new(),
        connections: HashMap::new(),
        dials,
        auth_connection: HashMap::new(),
        leaving: false,
        dead_closing: Vec::new(),
        datagrams,
        leave_pending: HashSet::new(),
        state: state.clone(),
        sync_out,
        sync_pending: HashMap::new(),
        sync_requests: HashMap::new(),
        next_sync_token: 0,
        supervisor: supervisor.clone(),
        commands,
        query_pending: HashMap::new(),
        next_query_token: 0,
        query_answers_tx,
        query_answers,
        query_requests: HashMap::new(),
        invites: invites.clone(),
        join_limiter: JoinLimiter::new(),
        join_pending: HashMap::new(),
        next_join_token: 0,
        join_answers_tx,
        join_answers,
        stats: NodeStats::default(),
        snapshot_tx,
        membership_tx,
        documents: state.subscribe(),
        data_dir: config.data_dir.clone(),
        removed: HashSet::new(),
        cut_off: Vec::new(),
        rendezvous: crate::discovery::rendezvous::RendezvousClient::new(points),
        external_addrs: config.external_addrs.clone(),
        point_registrations: HashSet::new(),
        nat: nat::NatState::default(),
        admitted_set,
        relay_server: config.relay_server,
        version: 0,
        last_publish: now,
        dirty: true,
        shutdown: shutdown.clone(),
    };
    let mut children = Children {
        node_shutdown: shutdown,
        node_task: None,
        state_shutdown,
        state_task: Some(state_task),
        supervisor_shutdown,
        supervisor_task,
        advertiser_shutdown,
        advertiser_task,
    };
    actor.sync_external_addrs(Instant::now());
    for ev in early_events {
        actor.on_swarm_event(ev).await;
    }
    if let Err(e) = actor.start_discovery().await {
        children.abort();
        return Err(e);
    }
    actor.publish(Instant::now());
    children.node_task = Some(tokio::spawn(actor.run()));
    Ok(NodeHandle::new(
        snapshot_rx,
        local_peer,
        state,
        supervisor,
        commands_tx,
        invites,
        children,
        swarm_registry,
    ))
}
