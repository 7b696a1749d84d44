//! Start-up and shutdown of one interface's daemon.
//!
//! Order matters: everything that can fail with a message the user must see
//! (TUN creation, the configuration socket, the UDP sockets) happens before
//! detaching, so that the parent can exit 1 with that message; threads are
//! spawned only after the fork.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ferroguard_proto::device::Device;

use crate::cli::Options;
use crate::config::ConfigHandler;
use crate::handed::ConfigSocket;
use crate::io_threads::IoThreads;
use crate::runtime::{self, Shared};
use crate::sys::privileges::{self, Account};
use crate::sys::process;
use crate::sys::tun::{Tun, TunOptions};
use crate::sys::udp_group::SocketGroup;
use crate::uapi::serve_concurrently;

/// Why the daemon stopped.
#[derive(Debug)]
pub enum Stop {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The interface was deleted.
    InterfaceGone,
    /// The configuration socket file was removed or replaced.
    SocketGone,
}

/// A set-up failure, with the message to print.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn random_seed() -> Result<[u8; 32], SetupError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SetupError(format!("no system randomness: {e}")))?;
    Ok(seed)
}

/// Runs the daemon until it is told to stop. Returns after cleanup.
pub fn run(options: &Options) -> Result<Stop, SetupError> {
    let name = &options.interface;
    let account = resolve_account(options)?;
    let io_threads = IoThreads::from_env();
    let tun = match crate::handed::take_tun() {
        Ok(Some(tun)) => Ok(tun),
        Ok(None) => create_tun(name, io_threads.lanes()),
        Err(e) => Err(e),
    }
    .map_err(|e| SetupError(format!("failed to create TUN device '{name}': {e}")))?;
    let listener = ConfigSocket::open(name).map_err(|e| {
        SetupError(format!(
            "failed to open the configuration socket for '{name}': {e}"
        ))
    })?;
    if account.is_some() && listener.owned_path().is_none() {
        return Err(SetupError(
            "--user needs the daemon's own configuration socket, not a handed one".into(),
        ));
    }
    let sockets = SocketGroup::bind(0, 0, tun.queue_count())
        .map_err(|e| SetupError(format!("failed to bind UDP sockets: {e}")))?;
    let metrics = bind_metrics(options)?;
    let child = if options.foreground {
        None
    } else {
        let child =
            process::daemonize().map_err(|e| SetupError(format!("failed to detach: {e}")))?;
        crate::logging::use_syslog();
        Some(child)
    };
    let socket_path = listener.owned_path().map(|p| p.to_path_buf());
    let socket_inode = socket_path
        .as_ref()
        .and_then(|p| fs::metadata(p).map(|m| m.ino()).ok());
    if let (Some(account), Some(path)) = (&account, &socket_path) {
        if let Err(e) = switch_user(account, path) {
            let message = format!("failed to switch to {account}: {e}");
            if let Some(child) = child {
                let _ = child.failed(&message);
            }
            return Err(SetupError(message));
        }
    }
    let mut device = Device::new(random_seed()?);
    if let Ok(mtu) = tun.mtu() {
        device.set_mtu(mtu as usize);
    }
    let shared = Shared::new(device, tun, sockets)
        .map_err(|e| SetupError(format!("failed to set up: {e}")))?;
    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    spawn_threads(&shared, io_threads, listener, stop_tx.clone());
    spawn_signal_thread(shared.clone(), stop_tx)?;
    if let Some(listener) = metrics {
        let (s, interface) = (shared.clone(), name.clone());
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::metrics::serve(listener, s, interface))
            .map_err(|e| SetupError(format!("failed to spawn: {e}")))?;
    }
    log::info!(
        "interface {name} up, listening on UDP port {}",
        shared.sockets().port()
    );
    if let Some(child) = child {
        let _ = child.ready();
    }
    let stop = watch(&shared, &stop_rx, socket_path.clone(), socket_inode);
    log::info!("shutting down: {stop:?}");
    if let Some(path) = &socket_path {
        cleanup(path, socket_inode);
    }
    Ok(stop)
}

/// The account of `--user`, looked up before anything is created so that
/// an unknown name is a one-line error that leaves nothing behind.
fn resolve_account(options: &Options) -> Result<Option<Account>, SetupError> {
    let Some(spec) = &options.user else {
        return Ok(None);
    };
    privileges::require_root()
        .and_then(|()| privileges::resolve(&spec.user, spec.group.as_deref()))
        .map(Some)
        .map_err(|e| SetupError(format!("--user: {e}")))
}

/// Leaves the socket file's removal to a root parent process, then drops to
/// `account` (see `sys::privileges`). Runs before any thread exists.
fn switch_user(account: &Account, socket_path: &std::path::Path) -> std::io::Result<()> {
    privileges::split_cleanup_parent(socket_path)?;
    privileges::drop_privileges(account)?;
    // The credential change cleared the parent-death signal.
    privileges::stop_with_parent()?;
    log::info!(
        "running as {account}, keeping CAP_NET_ADMIN and CAP_NET_BIND_SERVICE; \
         the socket file is removed by the parent process at exit"
    );
    Ok(())
}

/// Binds the metrics endpoint if asked, before detaching, so that an
/// address in use fails the start with a message.
fn bind_metrics(options: &Options) -> Result<Option<std::net::TcpListener>, SetupError> {
    let Some(addr) = options.metrics_listen else {
        return Ok(None);
    };
    let listener = crate::metrics::bind(addr)
        .map_err(|e| SetupError(format!("failed to listen for metrics on {addr}: {e}")))?;
    log::info!("serving metrics at http://{addr}/metrics");
    Ok(Some(listener))
}

/// Opens the TUN device with the kernel's offloads (virtio-net header, TSO,
/// USO), which falls back to a plain device where the kernel refuses them.
/// `FERROGUARD_NO_OFFLOAD=1` asks for the plain device (tests of that path).
/// With `queues` above one, a multi-queue device (one queue per lane).
fn create_tun(name: &str, queues: usize) -> std::io::Result<Tun> {
    let offloads = std::env::var("FERROGUARD_NO_OFFLOAD").as_deref() != Ok("1");
    let options = TunOptions {
        vnet_hdr: offloads,
        offloads,
    };
    let tun = Tun::create_queues(name, options, queues)?;
    log::debug!("TUN offloads: {:?}", tun.offloads());
    Ok(tun)
}

/// Starts the daemon's threads; the I/O threads as `io_threads` asks, on as
/// many lanes as the TUN device has queues.
pub(crate) fn spawn_threads(
    shared: &Arc<Shared>,
    io_threads: IoThreads,
    listener: ConfigSocket,
    stop: mpsc::Sender<Stop>,
) {
    for (name, role) in io_threads.fit(shared.lanes()).roles() {
        let s = shared.clone();
        let stop = stop.clone();
        thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // A thread returns when the TUN device is gone, or when it
                // cannot wait at all; either way the daemon cannot go on.
                let error = runtime::io_loop(s, role);
                if role.tun {
                    log::info!("TUN device closed: {error}");
                } else {
                    log::error!("{name} thread stopped: {error}");
                }
                let _ = stop.send(Stop::InterfaceGone);
            })
            .expect("spawn I/O thread");
    }
    let s = shared.clone();
    thread::Builder::new()
        .name("handshakes".into())
        .spawn(move || runtime::handshake_loop(s))
        .expect("spawn handshake thread");
    let s = shared.clone();
    thread::Builder::new()
        .name("timers".into())
        .spawn(move || runtime::timer_loop(s))
        .expect("spawn timer thread");
    match crate::sys::netlink::RouteMonitor::new() {
        Ok(monitor) => {
            let s = shared.clone();
            thread::Builder::new()
                .name("routes".into())
                .spawn(move || route_loop(s, monitor))
                .expect("spawn route thread");
        }
        Err(e) => log::info!("no route change notifications ({e}); sticky sources kept"),
    }
    let s = shared.clone();
    thread::Builder::new()
        .name("uapi".into())
        .spawn(move || uapi_loop(s, listener))
        .expect("spawn uapi thread");
}

/// How long a configuration client may go without progress (see
/// `uapi::ProgressStream`) before its connection is dropped. There is no
/// limit on a whole request: `wg setconf` of 2^20 peers keeps sending and
/// is never cut.
const UAPI_IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Serves configuration connections, several at once (`uapi::serve_concurrently`),
/// so that a silent client never blocks `wg`.
fn uapi_loop(shared: Arc<Shared>, listener: ConfigSocket) {
    let handler = ConfigHandler::new(shared);
    serve_concurrently(
        || listener.accept(),
        UAPI_IDLE_LIMIT,
        move || handler.clone(),
    );
}

/// Forgets every peer's sticky source address when routes or addresses
/// change, so that replies follow the new routing.
fn route_loop(shared: Arc<Shared>, monitor: crate::sys::netlink::RouteMonitor) {
    while monitor.wait().is_ok() {
        shared.engine().device.clear_sticky_sources();
        log::trace!("routes or addresses changed: sticky sources cleared");
    }
}

pub(crate) fn spawn_signal_thread(
    shared: Arc<Shared>,
    stop: mpsc::Sender<Stop>,
) -> Result<(), SetupError> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .map_err(|e| SetupError(format!("failed to install signal handlers: {e}")))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGUSR1 {
                    network_changed(&shared);
                    continue;
                }
                let _ = stop.send(Stop::Signal(signal));
                return;
            }
        })
        .map_err(|e| SetupError(format!("failed to spawn: {e}")))?;
    Ok(())
}

/// SIGUSR1: "the network changed" (a resume hook, a NetworkManager
/// dispatcher script, a VPN app's connectivity callback). The engine forgets
/// sticky sources and starts a fresh handshake with every peer that had a
/// session (see `Device::network_changed`). Route and address notifications
/// (`route_loop`) only forget sticky sources: they also fire for changes
/// that have nothing to do with the peers (wg-quick adding its own routes),
/// and a handshake for each would be noise.
fn network_changed(shared: &Shared) {
    let ((), pending) =
        shared.with_engine(|engine| engine.device.network_changed(crate::clock::now()));
    shared.send_all(pending);
    log::info!("network changed (SIGUSR1): sticky sources cleared, handshakes restarted");
}

/// Waits for a stop request, checking twice a second that the socket file is
/// still ours (if the daemon owns one) and refreshing the MTU used for padding.
pub(crate) fn watch(
    shared: &Shared,
    stop: &mpsc::Receiver<Stop>,
    socket_path: Option<PathBuf>,
    socket_inode: Option<u64>,
) -> Stop {
    let mut mtu = 0;
    loop {
        match stop.recv_timeout(Duration::from_millis(500)) {
            Ok(reason) => return reason,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Stop::InterfaceGone,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(path) = &socket_path {
            let current = fs::metadata(path).map(|m| m.ino()).ok();
            if current.is_none() || current != socket_inode {
                return Stop::SocketGone;
            }
        }
        if let Ok(now) = shared.tun().mtu() {
            if now != mtu {
                mtu = now;
                shared.engine().device.set_mtu(mtu as usize);
            }
        }
    }
}

/// Removes the socket file if it is still ours. The interface goes away when
/// the process exits and the TUN descriptor closes.
pub(crate) fn cleanup(socket_path: &PathBuf, socket_inode: Option<u64>) {
    let ours = fs::metadata(socket_path).map(|m| m.ino()).ok() == socket_inode;
    if ours && socket_inode.is_some() {
        let _ = fs::remove_file(socket_path);
    }
}
