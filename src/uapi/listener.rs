//! The listening socket `<socket dir>/<interface>.sock`.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable that overrides the socket directory (tests,
/// unprivileged runs).
pub const SOCKET_DIR_ENV: &str = "FERROGUARD_SOCKET_DIR";

/// Where `wg(8)` looks for userspace implementations' sockets.
const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// Attempts to replace a stale socket before giving up; more than one only
/// matters when another process races for the same name.
const PUBLISH_ATTEMPTS: usize = 3;

/// The directory of the UAPI sockets: `$FERROGUARD_SOCKET_DIR` if set and
/// not empty, else `/var/run/wireguard`.
pub fn socket_dir() -> PathBuf {
    socket_dir_from(std::env::var_os(SOCKET_DIR_ENV))
}

fn socket_dir_from(configured: Option<OsString>) -> PathBuf {
    match configured {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_SOCKET_DIR),
    }
}

/// The bound and listening UAPI socket of one interface. Dropping it closes
/// the socket and removes the socket file if it is still this one.
#[derive(Debug)]
pub struct UapiListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to recognise it on drop.
    identity: (u64, u64),
}

impl UapiListener {
    /// Binds `<socket_dir()>/<interface>.sock`; see [`UapiListener::bind_in`].
    pub fn bind(interface: &str) -> io::Result<UapiListener> {
        Self::bind_in(&socket_dir(), interface)
    }

    /// Binds `<dir>/<interface>.sock`.
    ///
    /// The directory is created (mode 0755) if missing. The socket is bound
    /// inside a private 0700 directory, given mode 0600 there, then
    /// hard-linked into place, so it is never reachable with a wider mode
    /// and an existing file is never overwritten. If the name is taken by a
    /// socket that accepts a connection, the error is
    /// [`io::ErrorKind::AddrInUse`] ("in use"); a socket that refuses is
    /// stale and is replaced; any other kind of file is left alone
    /// ([`io::ErrorKind::AlreadyExists`]).
    ///
    /// Interface names must be non-empty, without `/` or NUL, and must not
    /// start with `.`.
    pub fn bind_in(dir: &Path, interface: &str) -> io::Result<UapiListener> {
        check_interface_name(interface)?;
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
        let path = dir.join(format!("{interface}.sock"));
        let staging = StagingDir::create(dir)?;
        let staged_socket = staging.socket_path();
        let listener = UnixListener::bind(&staged_socket)?;
        fs::set_permissions(&staged_socket, fs::Permissions::from_mode(0o600))?;
        let metadata = fs::symlink_metadata(&staged_socket)?;
        publish(&staged_socket, &path)?;
        Ok(UapiListener {
            listener,
            path,
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// The path of the socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for and accepts one connection.
    pub fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().map(|(stream, _)| stream)
    }
}

impl AsRawFd for UapiListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl AsFd for UapiListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for UapiListener {
    fn drop(&mut self) {
        // Another daemon may have replaced a file we lost: only remove ours.
        if let Ok(metadata) = fs::symlink_metadata(&self.path) {
            if (metadata.dev(), metadata.ino()) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn check_interface_name(interface: &str) -> io::Result<()> {
    let valid =
        !interface.is_empty() && !interface.starts_with('.') && !interface.contains(['/', '\0']);
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {interface:?}"),
        ))
    }
}

/// Links the bound socket to its public name without ever overwriting a
/// live socket.
fn publish(staged_socket: &Path, path: &Path) -> io::Result<()> {
    for _ in 0..PUBLISH_ATTEMPTS {
        match fs::hard_link(staged_socket, path) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                remove_if_stale(path)?;
            }
            Err(error) => return Err(error),
        }
    }
    Err(in_use(path))
}

/// Removes `path` if it is a socket nobody listens on; errors if it is live
/// or not a socket.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    if UnixStream::connect(path).is_ok() {
        return Err(in_use(path));
    }
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn in_use(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("UAPI socket {} is in use", path.display()),
    )
}

/// A fresh private (0700) directory next to the final socket, removed with
/// its content on drop.
struct StagingDir {
    dir: PathBuf,
}

impl StagingDir {
    fn create(parent: &Path) -> io::Result<StagingDir> {
        const ATTEMPTS: usize = 100;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!(".ferroguard-{}-{serial}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(StagingDir { dir }),
                // Left over by an earlier process with the same pid: never
                // reuse a directory we did not create.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no staging directory")))
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("s")
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.socket_path());
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> TempDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("fg-uapi-{label}-{}-{serial}", std::process::id());
            let path = std::env::temp_dir().join(name);
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn socket_dir_defaults_and_override() {
        assert_eq!(socket_dir_from(None), Path::new("/var/run/wireguard"));
        assert_eq!(
            socket_dir_from(Some("".into())),
            Path::new("/var/run/wireguard")
        );
        assert_eq!(socket_dir_from(Some("/tmp/x".into())), Path::new("/tmp/x"));
    }

    /// The only test that touches the environment variable.
    #[test]
    fn bind_through_the_environment_override() {
        let temp = TempDir::new("env");
        let dir = temp.0.join("run").join("wireguard");
        std::env::set_var(SOCKET_DIR_ENV, &dir);
        let listener = UapiListener::bind("wgenv0").unwrap();
        std::env::remove_var(SOCKET_DIR_ENV);
        assert_eq!(listener.path(), dir.join("wgenv0.sock"));
        assert_eq!(mode(&dir) & !0o755, 0, "the directory is at most 0755");
        assert_eq!(mode(&dir) & 0o700, 0o700);
        assert_eq!(mode(listener.path()), 0o600);
    }

    #[test]
    fn socket_is_private_accepts_and_leaves_no_staging_behind() {
        let temp = TempDir::new("mode");
        let listener = UapiListener::bind_in(&temp.0, "wg0").unwrap();
        assert_eq!(mode(listener.path()), 0o600);
        let entries: Vec<_> = fs::read_dir(&temp.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![OsString::from("wg0.sock")]);

        let mut client = UnixStream::connect(listener.path()).unwrap();
        let mut server = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut received = [0u8; 4];
        server.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"ping");
    }

    #[test]
    fn second_bind_is_in_use_while_the_first_lives() {
        let temp = TempDir::new("inuse");
        let first = UapiListener::bind_in(&temp.0, "wg1").unwrap();
        let error = UapiListener::bind_in(&temp.0, "wg1").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains("in use"), "{error}");
        // The failed attempt did not disturb the live socket.
        assert!(UnixStream::connect(first.path()).is_ok());
        let path = first.path().to_path_buf();
        drop(first);
        assert!(!path.exists(), "drop removes the socket file");
        assert!(UapiListener::bind_in(&temp.0, "wg1").is_ok());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let temp = TempDir::new("stale");
        let path = temp.0.join("wg2.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(
            UnixStream::connect(&path).is_err(),
            "the old socket is dead"
        );
        let stale_inode = fs::symlink_metadata(&path).unwrap().ino();
        let listener = UapiListener::bind_in(&temp.0, "wg2").unwrap();
        assert_ne!(fs::symlink_metadata(&path).unwrap().ino(), stale_inode);
        assert!(UnixStream::connect(listener.path()).is_ok());
    }

    #[test]
    fn other_files_are_never_replaced() {
        let temp = TempDir::new("file");
        let path = temp.0.join("wg3.sock");
        fs::write(&path, b"not a socket").unwrap();
        let error = UapiListener::bind_in(&temp.0, "wg3").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn drop_leaves_a_replaced_file_alone() {
        let temp = TempDir::new("replaced");
        let listener = UapiListener::bind_in(&temp.0, "wg4").unwrap();
        fs::remove_file(listener.path()).unwrap();
        fs::write(listener.path(), b"someone else").unwrap();
        let path = listener.path().to_path_buf();
        drop(listener);
        assert_eq!(fs::read(&path).unwrap(), b"someone else");
    }

    /// Answers `get` with a fixed listen port and accepts every `set`.
    struct FixedHandler;

    impl super::super::UapiHandler for FixedHandler {
        fn get(&mut self) -> super::super::DeviceSnapshot {
            super::super::DeviceSnapshot {
                listen_port: 4242,
                ..Default::default()
            }
        }
        fn set(&mut self, _: super::super::SetRequest) -> Result<(), super::super::Errno> {
            Ok(())
        }
    }

    #[test]
    fn serves_a_real_connection() {
        let temp = TempDir::new("serve");
        let listener = UapiListener::bind_in(&temp.0, "wg5").unwrap();
        let mut client = UnixStream::connect(listener.path()).unwrap();
        let server = listener.accept().unwrap();
        let serving =
            std::thread::spawn(move || super::super::serve_connection(server, &mut FixedHandler));
        client.write_all(b"set=1\nfwmark=0\n\nget=1\n\n").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "errno=0\n\nlisten_port=4242\nerrno=0\n\n");
        assert!(serving.join().unwrap().is_ok());
    }

    #[test]
    fn bad_interface_names_are_refused() {
        let temp = TempDir::new("names");
        for name in ["", "a/b", "..", ".hidden", "nul\0"] {
            let error = UapiListener::bind_in(&temp.0, name).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
