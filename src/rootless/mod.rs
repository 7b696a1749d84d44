//! The rootless mode: `ferroguard --rootless [OPTIONS] CONFIG_FILE`.
//!
//! WireGuard without root, capabilities or a TUN device. The WireGuard
//! runtime runs unchanged (the same engine, UDP sockets, configuration
//! socket and threads as the TUN daemon), but its "TUN device" is one end
//! of a unix packet socket pair; at the other end an in-process TCP/IP
//! stack (smoltcp) terminates the tunnel's packets, and local forwards and
//! proxies connect applications to it. docs/ROOTLESS.md gives the design
//! and its reasons.

pub mod config;
mod driver;
pub mod http_connect;
pub mod socks5;
mod stack;

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use ferroguard_proto::device::Device;

use crate::config::ConfigHandler;
use crate::daemon::{self, SetupError, Stop};
use crate::handed::ConfigSocket;
use crate::runtime::Shared;
use crate::sys::tun::Tun;
use crate::sys::udp_group::SocketGroup;
use crate::uapi::{UapiHandler, UapiListener, SOCKET_DIR_ENV};

use self::config::RootlessConfig;

/// The usage text of the mode.
pub const USAGE: &str = "\
Usage: ferroguard --rootless [-v|--verbose] [--socket-dir DIR] CONFIG_FILE

Runs WireGuard without root or a TUN device: an in-process TCP/IP stack
terminates the tunnel, reached through the forwards and proxies of
CONFIG_FILE (a wg-quick file with [Forward], [Socks5], [HttpProxy] and
[Limits] sections; see docs/ROOTLESS.md). Runs in the foreground.

The configuration socket is DIR/NAME.sock, NAME being the file's name
without .conf; DIR is --socket-dir, else $FERROGUARD_SOCKET_DIR, else
$XDG_RUNTIME_DIR/ferroguard, else /tmp/ferroguard-UID.
";

/// The command line of the mode.
#[derive(Debug, PartialEq, Eq)]
pub struct RootlessOptions {
    /// The configuration file.
    pub config_file: PathBuf,
    /// Where to put the configuration socket.
    pub socket_dir: Option<PathBuf>,
    /// Debug logging.
    pub verbose: bool,
}

/// Parses the arguments after `--rootless`.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<RootlessOptions, String> {
    let mut args = args.into_iter();
    let mut config_file = None;
    let mut socket_dir = None;
    let mut verbose = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-v" | "--verbose" => verbose = true,
            "--socket-dir" => {
                socket_dir = Some(PathBuf::from(
                    args.next().ok_or("--socket-dir needs a directory")?,
                ))
            }
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ if config_file.is_none() => config_file = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    Ok(RootlessOptions {
        config_file: config_file.ok_or("no configuration file given")?,
        socket_dir,
        verbose,
    })
}

/// The interface name of a configuration file: its name without `.conf`.
pub fn interface_name(path: &Path) -> Result<String, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .ok_or_else(|| format!("cannot take a name from {}", path.display()))?;
    if stem.len() > 64
        || !stem
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_=+.-".contains(&c))
    {
        return Err(format!(
            "the file name {stem:?} is not a valid interface name (letters, digits, _=+.-)"
        ));
    }
    Ok(stem.to_string())
}

/// Reads and parses the configuration file.
pub fn load(path: &Path) -> Result<RootlessConfig, String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if metadata.len() > config::MAX_FILE_LEN as u64 {
        return Err(format!("{} is too large", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The socket directory: the option, the environment, the user's runtime
/// directory, or a directory of the user's own under /tmp.
fn socket_dir(option: Option<&Path>) -> PathBuf {
    if let Some(dir) = option {
        return dir.to_path_buf();
    }
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = env(SOCKET_DIR_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("ferroguard");
    }
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    PathBuf::from(format!("/tmp/ferroguard-{uid}"))
}

/// Resolves each peer's endpoint (names through the system resolver, once,
/// at start, as wg-quick does).
fn resolve_endpoints(config: &RootlessConfig) -> Result<Vec<Option<SocketAddr>>, SetupError> {
    config
        .peers
        .iter()
        .map(|peer| {
            let Some(endpoint) = &peer.endpoint else {
                return Ok(None);
            };
            endpoint
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .map(Some)
                .ok_or_else(|| SetupError(format!("cannot resolve endpoint {endpoint}")))
        })
        .collect()
}

/// Buffer of each end of the packet pipe (the kernel caps it at
/// `net.core.wmem_max` for unprivileged processes).
const PIPE_BUFFER: usize = 4 << 20;

/// Runs the rootless mode until a signal or a fatal error.
pub fn run(options: &RootlessOptions) -> Result<Stop, SetupError> {
    let name = interface_name(&options.config_file).map_err(SetupError)?;
    let config = load(&options.config_file).map_err(SetupError)?;
    let endpoints = resolve_endpoints(&config)?;
    let dir = socket_dir(options.socket_dir.as_deref());
    let listener = UapiListener::bind_in(&dir, &name).map_err(|e| {
        SetupError(format!(
            "failed to open the configuration socket in {}: {e}",
            dir.display()
        ))
    })?;
    let sockets = SocketGroup::bind(config.listen_port, 0, 1).map_err(|e| {
        SetupError(format!(
            "failed to bind UDP port {}: {e}",
            config.listen_port
        ))
    })?;
    let (runtime_end, stack_end) =
        packet_pipe().map_err(|e| SetupError(format!("failed to create the packet pipe: {e}")))?;
    let mut device = Device::new(daemon::random_seed()?);
    device.set_mtu(config.mtu);
    let tun = Tun::from_packet_socket(
        OwnedFd::from(runtime_end),
        &format!("rootless:{name}"),
        stack::PIPE_OFFLOADS,
    );
    let shared = Shared::new(device, tun, sockets)
        .map_err(|e| SetupError(format!("failed to set up: {e}")))?;
    ConfigHandler::new(shared.clone())
        .set(config.to_set_request(&endpoints))
        .map_err(|e| SetupError(format!("failed to apply the configuration: {e}")))?;
    let mut pipe = stack::PacketPipe::new(stack_end, shared.clone(), config.mtu)
        .map_err(|e| SetupError(format!("packet pipe: {e}")))?;
    let seed = u64::from_le_bytes(daemon::random_seed()?[..8].try_into().expect("8 bytes"));
    let iface = stack::interface(&mut pipe, &config.addresses, seed).map_err(SetupError)?;
    let mut driver = driver::Driver::new(&config, pipe, iface).map_err(SetupError)?;

    let socket_path = listener.path().to_path_buf();
    let socket_inode = std::fs::metadata(&socket_path).map(|m| m.ino()).ok();
    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let io_threads = crate::io_threads::IoThreads::from_env();
    daemon::spawn_threads(
        &shared,
        io_threads,
        ConfigSocket::Bound(listener),
        stop_tx.clone(),
    );
    daemon::spawn_signal_thread(shared.clone(), stop_tx.clone())?;
    thread::Builder::new()
        .name("stack".into())
        .spawn(move || {
            let error = driver.run();
            log::error!("the stack stopped: {error}");
            let _ = stop_tx.send(Stop::InterfaceGone);
        })
        .map_err(|e| SetupError(format!("failed to spawn: {e}")))?;
    log::info!(
        "rootless interface {name} up, UDP port {}, configuration socket {}",
        shared.sockets().port(),
        socket_path.display()
    );
    println!("configuration socket: {}", socket_path.display());
    let stop = daemon::watch(&shared, &stop_rx, Some(socket_path.clone()), socket_inode);
    log::info!("shutting down: {stop:?}");
    daemon::cleanup(&socket_path, socket_inode);
    Ok(stop)
}

/// The unix datagram pair between the runtime and the stack, with large
/// buffers so that bursts wait in the kernel rather than being dropped.
fn packet_pipe() -> std::io::Result<(UnixDatagram, UnixDatagram)> {
    let (a, b) = UnixDatagram::pair()?;
    for end in [&a, &b] {
        let socket = socket2::SockRef::from(end);
        socket.set_send_buffer_size(PIPE_BUFFER)?;
        socket.set_recv_buffer_size(PIPE_BUFFER)?;
    }
    Ok((a, b))
}

/// `main` of the mode: arguments after `--rootless`; returns the exit code.
pub fn main(args: impl IntoIterator<Item = String>) -> u8 {
    let args: Vec<String> = args.into_iter().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return 0;
    }
    let options = match parse_args(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("ferroguard: {e}\n\n{USAGE}");
            return 2;
        }
    };
    let name = interface_name(&options.config_file).unwrap_or_else(|_| "rootless".into());
    let level = if options.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    crate::logging::init(&name, level);
    match run(&options) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("ferroguard: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_and_refuse_what_is_unknown() {
        let args = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        let options = args(&["-v", "--socket-dir", "/x", "wg0.conf"]).unwrap();
        assert_eq!(options.config_file, PathBuf::from("wg0.conf"));
        assert_eq!(options.socket_dir, Some(PathBuf::from("/x")));
        assert!(options.verbose);
        assert!(args(&[]).unwrap_err().contains("no configuration file"));
        assert!(args(&["--socket-dir"])
            .unwrap_err()
            .contains("needs a directory"));
        assert!(args(&["-x", "a"]).unwrap_err().contains("unknown option"));
        assert!(args(&["a", "b"]).unwrap_err().contains("unexpected"));
    }

    #[test]
    fn names_come_from_the_file_name() {
        assert_eq!(
            interface_name(Path::new("/etc/wg/office.conf")).unwrap(),
            "office"
        );
        assert!(interface_name(Path::new("/x/.conf")).is_err());
        assert!(interface_name(Path::new("/x/a b.conf")).is_err());
    }
}
