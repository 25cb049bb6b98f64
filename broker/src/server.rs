//! Process start-up and shutdown: reserve ports, start one pinned glommio
//! executor per shard, wait until every shard has recovered its storage and
//! is listening, print the addresses, then wait for SIGINT/SIGTERM and shut
//! every shard down (stop accepting, finish in-flight appends, sync, close).

use crate::config::BrokerConfig;
use crate::context::ShardContext;
use crate::mesh::{Mesh, ShardRequest};
use crate::metrics::{bump, ShardMetrics};
use coremq_shard::{ShardId, ShardStorage, StorageConfig};
use futures::future::{select, Either};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
    #[error(transparent)]
    Manifest(#[from] coremq_shard::manifest::ManifestError),
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: u16, reason: String },
    #[error("cannot start executor for shard {shard}: {reason}")]
    Executor { shard: u16, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How often each shard runs storage maintenance (interval fsync, retention, checkpoint).
const MAINTENANCE_EVERY: Duration = Duration::from_millis(100);

/// Runs the broker until SIGINT or SIGTERM.
pub fn run(config: BrokerConfig) -> Result<(), StartError> {
    let handle = start(config)?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(StartError::Signals)?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    handle.shutdown();
    Ok(())
}

pub struct BrokerHandle {
    mesh: Mesh,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    pub main_address: SocketAddr,
    pub shard_addresses: Vec<SocketAddr>,
}

impl BrokerHandle {
    /// Asks every shard to drain and close, and waits for them.
    pub fn shutdown(self) {
        let replies: Vec<_> = (0..self.mesh.shard_count())
            .map(|shard| {
                let (tx, rx) = futures::channel::oneshot::channel();
                let sent = futures::executor::block_on(
                    self.mesh.send(shard, ShardRequest::Shutdown { reply: tx }),
                );
                (shard, sent, rx)
            })
            .collect();
        for (shard, sent, rx) in replies {
            if sent && futures::executor::block_on(rx).is_err() {
                tracing::warn!(shard, "shard stopped without confirming shutdown");
            }
        }
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a shard thread panicked during shutdown");
            }
        }
        tracing::info!("all shards closed");
    }
}

/// Makes any panic, on any thread, stop the whole process: glommio does not
/// catch task panics everywhere (one in a non-default task queue aborts; one
/// elsewhere can end a shard's thread and leave the others serving, a
/// half-alive broker whose partitions on the dead shard hang). The panic is
/// printed (by the previous hook), logged, and the process aborts; storage
/// recovers at the next start as after a kill -9, and nothing acknowledged
/// is lost because nothing is acknowledged before it is durable.
pub fn stop_the_process_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "a thread of the broker panicked: stopping the whole process so that no shard \
             is left dead while the others serve (storage recovers at the next start)"
        );
        eprintln!("coremq: a thread panicked ({info}); aborting the broker");
        std::process::abort();
    }));
}

pub fn start(config: BrokerConfig) -> Result<BrokerHandle, StartError> {
    stop_the_process_on_panic();
    let new_data_dir = std::fs::read_dir(&config.data_dir)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(true);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let shards = config.shards;
    coremq_shard::manifest::open_or_create(&config.data_dir, shards)?;
    if new_data_dir {
        let total_bytes = config.segment_bytes * u64::from(shards);
        tracing::info!(
            data_dir = %config.data_dir.display(),
            segment_bytes = config.segment_bytes,
            shards,
            total_bytes,
            "new data directory: each shard pre-allocates one commit-log segment of {} MiB \
             before any message is stored, {} MiB in all, and the next one once a segment \
             is half full (--segment-bytes sets the size)",
            config.segment_bytes >> 20,
            total_bytes >> 20
        );
    }

    // Resolve every port first: the main placeholder keeps the main port ours
    // until the shards bind it; the own ports are already listening.
    let ports = crate::ports::reserve(config.listen, shards)?;
    let (main_address, shard_addresses) = (ports.main_address, ports.shard_addresses.clone());
    let mut own_listeners = ports.own_listeners.into_iter();
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let (mesh, receivers) = Mesh::new(shards);
    let (opened_tx, opened_rx) = mpsc::channel::<Result<u16, StartError>>();
    let (listening_tx, listening_rx) = mpsc::channel::<Result<u16, StartError>>();
    let mut listen_signals = Vec::with_capacity(usize::from(shards));
    let mut threads = Vec::with_capacity(shards as usize);
    for (shard, receiver) in (0..shards).zip(receivers) {
        let placement = match (config.pin_cores, cores.is_empty()) {
            (true, false) => Placement::Fixed(cores[shard as usize % cores.len()]),
            _ => Placement::Unbound,
        };
        // Buffers the storage writes from and caches (MACHINE.md: registered with
        // io_uring when memlock allows; glommio's 10 MiB default halves throughput).
        let io_memory = storage_config(&config, shard).io_memory_bytes();
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{shard}"))
            .io_memory(io_memory);
        if let Some(spin) = config.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let own_listener = own_listeners.next().ok_or_else(|| StartError::Executor {
            shard,
            reason: "no own port reserved".into(),
        })?;
        let (listen_tx, listen_rx) = futures::channel::oneshot::channel();
        listen_signals.push(listen_tx);
        let phases = StartPhases {
            opened: opened_tx.clone(),
            listen: listen_rx,
            listening: listening_tx.clone(),
        };
        let (config, mesh, shard_addresses) =
            (config.clone(), mesh.clone(), shard_addresses.clone());
        let thread = builder
            .spawn(move || {
                shard_main(
                    shard,
                    config,
                    mesh,
                    receiver,
                    ShardPorts {
                        main_address,
                        own_listener,
                        shard_addresses,
                    },
                    phases,
                )
            })
            .map_err(|e| StartError::Executor {
                shard,
                reason: e.to_string(),
            })?;
        threads.push(thread);
    }
    drop((opened_tx, listening_tx));

    // Every shard has recovered its storage before any of them listens: the
    // coordinator first makes the shards' catalogs agree (a create or delete
    // cut short by a crash), so no client ever sees them disagree.
    let mut first_error = wait_for_shards(&opened_rx, shards);
    if first_error.is_none() {
        let reconciled =
            futures::executor::block_on(mesh.call(crate::context::CATALOG_COORDINATOR, |reply| {
                ShardRequest::ReconcileCatalog { reply }
            }));
        if let Err(error) = reconciled {
            first_error = Some(StartError::Shard {
                shard: crate::context::CATALOG_COORDINATOR,
                reason: format!("cannot reconcile the topic catalogs: {}", error.message),
            });
        }
    }
    if first_error.is_none() {
        for signal in listen_signals {
            let _ = signal.send(());
        }
        first_error = wait_for_shards(&listening_rx, shards);
    } else {
        drop(listen_signals);
    }
    drop(ports.main_placeholder);
    let handle = BrokerHandle {
        mesh,
        threads,
        main_address,
        shard_addresses,
    };
    if let Some(error) = first_error {
        handle.shutdown();
        return Err(error);
    }
    Ok(handle)
}

/// Waits for one report per shard; returns the first failure.
fn wait_for_shards(
    reports: &mpsc::Receiver<Result<u16, StartError>>,
    shards: u16,
) -> Option<StartError> {
    let mut first_error = None;
    for _ in 0..shards {
        match reports.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert(StartError::Shard {
                    shard: 0,
                    reason: "a shard thread died".into(),
                });
                break;
            }
        }
    }
    first_error
}

/// The storage settings of one shard, from the broker's.
fn storage_config(config: &BrokerConfig, shard: u16) -> StorageConfig {
    let dir = config.data_dir.join(format!("shard-{shard}"));
    let mut storage = StorageConfig::new(ShardId(shard), config.shards, dir);
    storage.segment_bytes = config.segment_bytes;
    storage.read_cache_bytes = config.read_cache_bytes;
    storage.max_batch_bytes = config.max_batch_bytes;
    storage.default_durability = config.default_durability;
    storage.recycle_segments = config.recycle_segments;
    storage.repair_corruption = config.repair_corruption;
    storage
}

/// What a shard listens on: the shared main port (bound by the shard itself,
/// SO_REUSEPORT) and its own port (already listening, see [`crate::ports`]).
struct ShardPorts {
    main_address: SocketAddr,
    own_listener: socket2::Socket,
    shard_addresses: Vec<SocketAddr>,
}

/// How a shard and the main thread step through start-up together.
struct StartPhases {
    /// The shard reports its storage opened (and that it serves the mesh).
    opened: mpsc::Sender<Result<u16, StartError>>,
    /// The main thread says: listen (dropped instead when start-up fails).
    listen: futures::channel::oneshot::Receiver<()>,
    /// The shard reports it accepts connections.
    listening: mpsc::Sender<Result<u16, StartError>>,
}

async fn shard_main(
    shard: u16,
    config: BrokerConfig,
    mesh: Mesh,
    receiver: async_channel::Receiver<ShardRequest>,
    ports: ShardPorts,
    phases: StartPhases,
) {
    let ShardPorts {
        main_address,
        own_listener,
        shard_addresses,
    } = ports;
    let fail = |sender: &mpsc::Sender<Result<u16, StartError>>, reason: String| {
        tracing::error!(shard, %reason, "shard failed to start");
        let _ = sender.send(Err(StartError::Shard { shard, reason }));
    };
    let storage = match ShardStorage::open(storage_config(&config, shard)).await {
        Ok(storage) => storage,
        Err(error) => return fail(&phases.opened, format!("cannot open storage: {error}")),
    };
    let (shard_buffer_bytes, forwarded_bytes) =
        (config.max_shard_buffer_bytes, config.max_forwarded_bytes);
    let ctx = Rc::new(ShardContext {
        id: shard,
        config,
        storage,
        mesh,
        metrics: ShardMetrics::default(),
        main_address,
        shard_addresses,
        shutting_down: Cell::new(false),
        catalog_changes: glommio::sync::Semaphore::new(1),
        shutdown: event_listener::Event::new(),
        buffer_budget: Rc::new(crate::budget::ByteBudget::new(shard_buffer_bytes)),
        forwarded_bytes: Rc::new(glommio::sync::Semaphore::new(forwarded_bytes)),
        peer_requests: Rc::new(glommio::sync::Semaphore::new(
            crate::mesh::MESH_CHANNEL_DEPTH as u64,
        )),
    });
    // Peers (and the catalog reconciliation) can reach this shard from here on.
    let mesh_task = glommio::spawn_local(serve_mesh(ctx.clone(), receiver));
    let _ = phases.opened.send(Ok(shard));

    let mut tasks = Vec::new();
    if phases.listen.await.is_ok() {
        match glommio::net::TcpListener::bind(main_address) {
            Ok(main_listener) => {
                let own_listener = crate::ports::into_glommio(own_listener);
                for listener in [main_listener, own_listener] {
                    tasks.push(glommio::spawn_local(accept_loop(ctx.clone(), listener)));
                }
                tasks.push(glommio::spawn_local(maintenance_loop(ctx.clone())));
                tracing::info!(shard, address = %ctx.shard_addresses[shard as usize], "shard ready");
                let _ = phases.listening.send(Ok(shard));
            }
            Err(error) => fail(
                &phases.listening,
                format!("cannot listen on {main_address}: {error}"),
            ),
        }
    }
    mesh_task.await;
    for task in tasks {
        task.await;
    }
}

/// Serves requests from peers (and the main thread) until told to shut down.
async fn serve_mesh(ctx: Rc<ShardContext>, receiver: async_channel::Receiver<ShardRequest>) {
    while let Ok(request) = receiver.recv().await {
        match request {
            ShardRequest::Shutdown { reply } => {
                shutdown(&ctx).await;
                let _ = reply.send(());
                return;
            }
            other => {
                // Data requests hold permits while served, so the bounded
                // channel, not a pile of detached tasks, holds the excess.
                let (count, bytes) = match &other {
                    ShardRequest::Append { batches, .. } => (
                        1,
                        (batches.len() as u64).clamp(1, ctx.config.max_forwarded_bytes),
                    ),
                    ShardRequest::Fetch { .. } | ShardRequest::ListOffset { .. } => (1, 0),
                    _ => (0, 0),
                };
                let permits = async {
                    let count = ctx.peer_requests.acquire_static_permit(count).await?;
                    let bytes = ctx.forwarded_bytes.acquire_static_permit(bytes).await?;
                    Ok::<_, glommio::GlommioError<()>>((count, bytes))
                };
                let Ok(permits) = permits.await else {
                    return; // closed: shutting down
                };
                let ctx = ctx.clone();
                glommio::spawn_local(async move {
                    ctx.serve_peer_request(other).await;
                    drop(permits);
                })
                .detach();
            }
        }
    }
}

async fn shutdown(ctx: &ShardContext) {
    ctx.shutting_down.set(true);
    ctx.shutdown.notify(usize::MAX);
    // In-flight appends finish (bounded wait); new requests get ShuttingDown.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ctx.metrics.in_flight.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if let Err(error) = ctx.storage.close().await {
        tracing::error!(shard = ctx.id, %error, "closing storage failed");
    }
    tracing::info!(shard = ctx.id, "shard closed");
}

async fn accept_loop(ctx: Rc<ShardContext>, listener: glommio::net::TcpListener) {
    let mut failures = 0u32;
    loop {
        let stopping = ctx.shutdown.listen();
        if ctx.shutting_down.get() {
            return;
        }
        let accept = listener.accept();
        futures::pin_mut!(accept);
        match select(accept, stopping).await {
            Either::Right(_) => return,
            Either::Left((Ok(stream), _)) => {
                failures = 0;
                if ctx.metrics.connections.get() as usize >= ctx.config.max_connections {
                    bump(&ctx.metrics.connections_refused, 1);
                    tracing::warn!(
                        shard = ctx.id,
                        limit = ctx.config.max_connections,
                        "connection limit reached (--max-connections); refusing a connection"
                    );
                    drop(stream);
                    continue;
                }
                glommio::spawn_local(crate::connection::serve(ctx.clone(), stream)).detach();
            }
            Either::Left((Err(error), _)) => {
                // EMFILE and friends: back off instead of spinning.
                failures += 1;
                tracing::warn!(shard = ctx.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis((1u64 << failures.min(10)).min(1000)))
                    .await;
            }
        }
    }
}

async fn maintenance_loop(ctx: Rc<ShardContext>) {
    while !ctx.shutting_down.get() {
        let stopping = ctx.shutdown.listen();
        let tick = glommio::timer::sleep(MAINTENANCE_EVERY);
        futures::pin_mut!(tick);
        if let Either::Right(_) = select(tick, stopping).await {
            return;
        }
        if let Err(error) = ctx.storage.maintenance().await {
            tracing::error!(shard = ctx.id, %error, "storage maintenance failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Set in the child process the test below starts.
    const CHILD: &str = "COREMQ_TEST_PANIC_CHILD";

    #[test]
    fn a_panic_on_any_thread_stops_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::stop_the_process_on_panic();
            let shard = std::thread::Builder::new()
                .name("shard-1".into())
                .spawn(|| panic!("a bug in a shard"))
                .expect("spawn");
            let _ = shard.join();
            // Only reached when the panic left the process running.
            std::process::exit(0);
        }
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "server::tests::a_panic_on_any_thread_stops_the_process",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "the process went on after a thread panicked: {stderr}"
        );
        assert!(stderr.contains("a bug in a shard"), "{stderr}");
        assert!(stderr.contains("aborting the broker"), "{stderr}");
    }
}
