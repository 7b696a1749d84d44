//! Dropping root after set-up (`--user NAME[:GROUP]`).
//!
//! Everything that needs root happens before: the TUN device, the UDP
//! sockets and the configuration socket exist when [`drop_privileges`] runs.
//! What the daemon still does afterwards, and what the kernel asks for it:
//!
//! | Operation after the drop | Needs |
//! |---|---|
//! | `wg set fwmark` (`SO_MARK`; wg-quick sets it for default routes) | `CAP_NET_ADMIN` |
//! | `wg set listen-port`: new sockets, `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` | `CAP_NET_ADMIN` (else smaller buffers) |
//! | ... a listen port below 1024 | `CAP_NET_BIND_SERVICE` |
//! | configuration connections (accepted on the socket bound before) | nothing: the kernel checks the *client's* write permission on the 0600 root socket file, so root's `wg` connects and other users are refused as before |
//! | reading and writing the TUN descriptor, closing it (deletes the interface) | nothing |
//! | the route monitor (rtnetlink multicast groups) | nothing |
//! | the MTU (`SIOCGIFMTU`) where the interface was created | nothing |
//! | the MTU of an interface moved to another namespace (`setns`) | `CAP_SYS_ADMIN`: not kept; the last known MTU stays in use |
//! | watching the socket file (`stat`) | search permission on the directory (0755) |
//! | removing the socket file in root's 0755 directory | write permission there: done by the cleanup parent (below) |
//! | syslog (`/dev/log`) | nothing |
//!
//! So the daemon keeps exactly `CAP_NET_ADMIN` and `CAP_NET_BIND_SERVICE`
//! ([`KEPT_CAPABILITIES`]), in its effective and permitted sets and in the
//! bounding set; the inheritable and ambient sets are empty and
//! `no_new_privs` is set, so nothing can be regained through `execve`.
//!
//! # The cleanup parent
//!
//! The fixed point "on SIGTERM the daemon removes the TUN and the socket and
//! exits 0" needs one operation the unprivileged user cannot do: unlinking
//! `/var/run/wireguard/NAME.sock` in root's directory. Rather than keeping a
//! capability that overrides file permissions, [`split_cleanup_parent`]
//! forks before the drop: the child goes on to drop its privileges and run
//! the tunnel; the parent keeps uid 0 (the owner of the directory, so it
//! needs no capability to unlink there) with only `CAP_KILL`, closes every
//! descriptor, forwards SIGINT, SIGTERM and SIGUSR1 to the child, and when the child
//! has exited removes the socket file if it is still the one that was bound,
//! then exits with the child's status (0 when the child stopped on SIGINT or
//! SIGTERM). It reads no input and holds no key. The child gets SIGTERM if
//! the parent dies first (`PR_SET_PDEATHSIG`).
//!
//! Credentials are per thread in the kernel, and `capset(2)` changes only
//! the calling thread's: both functions must run while the process has a
//! single thread (checked).

use super::check;
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A capability number (`CAP_*` of `<linux/capability.h>`).
pub type Capability = u32;

/// `CAP_NET_BIND_SERVICE`: binding a UDP port below 1024.
pub const CAP_NET_BIND_SERVICE: Capability = 10;
/// `CAP_NET_ADMIN`: `SO_MARK`, `SO_*BUFFORCE`.
pub const CAP_NET_ADMIN: Capability = 12;
/// `CAP_KILL`: signalling a process of another user.
pub const CAP_KILL: Capability = 5;

/// The capabilities the daemon keeps after [`drop_privileges`].
pub const KEPT_CAPABILITIES: [Capability; 2] = [CAP_NET_ADMIN, CAP_NET_BIND_SERVICE];

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes an array of two.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The account to switch to, resolved from names before anything is
/// created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user's name (as given, or from the password database).
    pub user: String,
    /// The user id.
    pub uid: libc::uid_t,
    /// The group's name.
    pub group: String,
    /// The group id; also the only supplementary group.
    pub gid: libc::gid_t,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (uid {}, gid {})",
            self.user, self.group, self.uid, self.gid
        )
    }
}

/// Looks `user` (a name, or a number with an entry in the password
/// database) and `group` up; without `group`, the user's primary group.
/// Refuses unknown names and uid 0 (switching to root drops nothing).
pub fn resolve(user: &str, group: Option<&str>) -> io::Result<Account> {
    let (user_name, uid, primary_gid) =
        lookup_user(user)?.ok_or_else(|| not_found(format!("unknown user '{user}'")))?;
    if uid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("user '{user}' is root: nothing would be dropped"),
        ));
    }
    let (group_name, gid) = match group {
        Some(group) => lookup_group_by_name(group)?
            .ok_or_else(|| not_found(format!("unknown group '{group}'")))?,
        None => (
            lookup_group_by_id(primary_gid)?.unwrap_or_else(|| primary_gid.to_string()),
            primary_gid,
        ),
    };
    Ok(Account {
        user: user_name,
        uid,
        group: group_name,
        gid,
    })
}

fn not_found(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, message)
}

/// Name, uid and primary gid of `user`, by name, else by number.
fn lookup_user(user: &str) -> io::Result<Option<(String, libc::uid_t, libc::gid_t)>> {
    let extract = |entry: &libc::passwd| {
        // SAFETY: the entry's strings point into the lookup's buffer, which
        // is alive while `extract` runs (see `lookup_entry`).
        let name = unsafe { c_string(entry.pw_name) };
        (name, entry.pw_uid, entry.pw_gid)
    };
    if let Ok(name) = CString::new(user) {
        let found = lookup_entry(
            |entry: &mut libc::passwd, buf: &mut [libc::c_char], result| {
                // SAFETY: all pointers are live and `buf.len()` is the size of
                // `buf`; getpwnam_r writes the entry and its strings only there.
                unsafe {
                    libc::getpwnam_r(name.as_ptr(), entry, buf.as_mut_ptr(), buf.len(), result)
                }
            },
            extract,
        )?;
        if found.is_some() {
            return Ok(found);
        }
    }
    let Ok(uid) = user.parse::<libc::uid_t>() else {
        return Ok(None);
    };
    lookup_entry(
        |entry: &mut libc::passwd, buf: &mut [libc::c_char], result| {
            // SAFETY: as above, for getpwuid_r.
            unsafe { libc::getpwuid_r(uid, entry, buf.as_mut_ptr(), buf.len(), result) }
        },
        extract,
    )
}

/// Name and gid of `group`, by name, else by number.
fn lookup_group_by_name(group: &str) -> io::Result<Option<(String, libc::gid_t)>> {
    if let Ok(name) = CString::new(group) {
        let found = lookup_entry(
            |entry: &mut libc::group, buf: &mut [libc::c_char], result| {
                // SAFETY: all pointers are live and `buf.len()` is the size of `buf`.
                unsafe {
                    libc::getgrnam_r(name.as_ptr(), entry, buf.as_mut_ptr(), buf.len(), result)
                }
            },
            // SAFETY: the name points into the live buffer (see lookup_user).
            |entry: &libc::group| (unsafe { c_string(entry.gr_name) }, entry.gr_gid),
        )?;
        if found.is_some() {
            return Ok(found);
        }
    }
    let Ok(gid) = group.parse::<libc::gid_t>() else {
        return Ok(None);
    };
    Ok(lookup_group_by_id(gid)?.map(|name| (name, gid)))
}

/// The name of group `gid`, if the group database has it.
fn lookup_group_by_id(gid: libc::gid_t) -> io::Result<Option<String>> {
    lookup_entry(
        |entry: &mut libc::group, buf: &mut [libc::c_char], result| {
            // SAFETY: all pointers are live and `buf.len()` is the size of `buf`.
            unsafe { libc::getgrgid_r(gid, entry, buf.as_mut_ptr(), buf.len(), result) }
        },
        // SAFETY: the name points into the live buffer (see lookup_user).
        |entry: &libc::group| unsafe { c_string(entry.gr_name) },
    )
}

/// Copies a C string out.
///
/// # Safety
///
/// `ptr` must point at a NUL-terminated string that stays valid during the
/// call.
unsafe fn c_string(ptr: *const libc::c_char) -> String {
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// Runs a `get*_r` lookup with a buffer that grows on `ERANGE` (up to
/// 1 MiB) and returns what `extract` takes from the entry while its buffer
/// is alive, or `None` if there is no such entry.
fn lookup_entry<E, T>(
    lookup: impl Fn(&mut E, &mut [libc::c_char], *mut *mut E) -> libc::c_int,
    extract: impl Fn(&E) -> T,
) -> io::Result<Option<T>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: passwd and group are plain C structs of integers and
        // pointers, for which all-zero is a valid (empty) value.
        let mut entry: E = unsafe { std::mem::zeroed() };
        let mut result: *mut E = std::ptr::null_mut();
        let rc = lookup(&mut entry, &mut buf, &mut result);
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 2;
            continue;
        }
        if result.is_null() {
            // "Not found" is rc 0 or one of ENOENT, ESRCH, EBADF, EPERM
            // (getpwnam(3)); other codes are real failures.
            return match rc {
                0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
                code => Err(io::Error::from_raw_os_error(code)),
            };
        }
        return Ok(Some(extract(&entry)));
    }
}

/// Fails unless the process runs as root: `--user` is refused up front
/// rather than after the interface was created.
pub fn require_root() -> io::Result<()> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("switching users needs root (running as uid {euid})"),
        ))
    }
}

/// The number of threads of this process (from `/proc/self/status`).
fn thread_count() -> io::Result<usize> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no thread count in /proc/self/status"))
}

fn require_single_thread() -> io::Result<()> {
    match thread_count()? {
        1 => Ok(()),
        n => Err(io::Error::other(format!(
            "credentials must change before threads start ({n} threads run)"
        ))),
    }
}

/// Switches the calling (single-threaded) process to `account` for good,
/// keeping only [`KEPT_CAPABILITIES`], then checks the result: real,
/// effective and saved ids are the account's, the only group is its group,
/// the capability sets are exactly the kept ones, `no_new_privs` is set.
pub fn drop_privileges(account: &Account) -> io::Result<()> {
    require_single_thread()?;
    switch_ids(account).map_err(explain_permission_error)?;
    prctl(libc::PR_SET_KEEPCAPS, 0)?;
    // The uid change emptied the effective set; raise the kept ones again
    // and forget the rest of the permitted set.
    set_capabilities(&KEPT_CAPABILITIES)?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    verify(account)
}

/// Limits the bounding set and sets groups, gids and uids, with the
/// permitted capabilities kept across the uid change.
fn switch_ids(account: &Account) -> io::Result<()> {
    limit_bounding_set(&KEPT_CAPABILITIES)?;
    // Without KEEPCAPS, leaving uid 0 would empty the permitted set.
    prctl(libc::PR_SET_KEEPCAPS, 1)?;
    let groups = [account.gid];
    // SAFETY: `groups` is a live array of one gid_t, as the count says.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain integer arguments. Group before user: once the uid is
    // not 0 the group could no longer be changed.
    check(unsafe { libc::setresgid(account.gid, account.gid, account.gid) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(account.uid, account.uid, account.uid) })?;
    Ok(())
}

/// Says which capabilities were missing when the switch was refused (for
/// instance under a service manager's capability bounding set).
fn explain_permission_error(error: io::Error) -> io::Error {
    if error.raw_os_error() != Some(libc::EPERM) {
        return error;
    }
    io::Error::new(
        error.kind(),
        format!("{error}: switching users needs CAP_SETUID, CAP_SETGID and CAP_SETPCAP"),
    )
}

/// Checks that [`drop_privileges`] took hold and cannot be undone.
fn verify(account: &Account) -> io::Result<()> {
    let (uids, gids) = (resuid()?, resgid()?);
    let uid = account.uid;
    let gid = account.gid;
    if uids != (uid, uid, uid) || gids != (gid, gid, gid) {
        return Err(io::Error::other(format!(
            "ids after the switch: uid {uids:?}, gid {gids:?}"
        )));
    }
    let groups = supplementary_groups()?;
    if groups != [gid] {
        return Err(io::Error::other(format!(
            "supplementary groups after the switch: {groups:?}"
        )));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
        return Err(io::Error::other("no_new_privs is not set"));
    }
    let expected = capability_mask(&KEPT_CAPABILITIES);
    let sets = current_capabilities()?;
    if sets.effective != expected || sets.permitted != expected || sets.inheritable != 0 {
        return Err(io::Error::other(format!(
            "capabilities after the switch: {sets:x?}"
        )));
    }
    // SAFETY: plain integer argument. This must fail: with the uid and the
    // saved uid not 0 and no CAP_SETUID, root is out of reach.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other("setuid(0) still succeeds"));
    }
    Ok(())
}

/// The three capability sets of the calling thread, as 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilitySets {
    /// The effective set.
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
}

/// The bit mask of `capabilities`.
pub fn capability_mask(capabilities: &[Capability]) -> u64 {
    capabilities
        .iter()
        .filter(|&&cap| cap < 64)
        .fold(0, |mask, &cap| mask | 1 << cap)
}

/// `capget(2)` for the calling thread.
pub fn current_capabilities() -> io::Result<CapabilitySets> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and the two-element `data` array are live and laid
    // out as the kernel's version-3 structures; it writes only `data`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    check(ret as libc::c_int)?;
    let join = |low: u32, high: u32| u64::from(low) | u64::from(high) << 32;
    Ok(CapabilitySets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// `capset(2)`: effective = permitted = `capabilities`, inheritable empty.
/// Can only remove from the permitted set (and raise within it).
pub fn set_capabilities(capabilities: &[Capability]) -> io::Result<()> {
    let mask = capability_mask(capabilities);
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| {
        let bits = (mask >> shift) as u32;
        CapData {
            effective: bits,
            permitted: bits,
            inheritable: 0,
        }
    };
    let data = [word(0), word(32)];
    // SAFETY: `header` and the two-element `data` array are live and laid
    // out as the kernel's version-3 structures; the kernel only reads
    // `data` (and may write the preferred version into `header`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// Removes every capability but `keep` from the bounding set (needs
/// `CAP_SETPCAP`, so before the uid changes). Capabilities the kernel does
/// not know end the walk (`PR_CAPBSET_READ` fails with `EINVAL`).
fn limit_bounding_set(keep: &[Capability]) -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let known = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if known < 0 {
            break;
        }
        if known == 1 && !keep.contains(&cap) {
            prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)?;
        }
    }
    Ok(())
}

/// `prctl(option, value, 0, 0, 0)`.
fn prctl(option: libc::c_int, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, value, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) })
        .map(drop)
}

/// Real, effective and saved user ids.
fn resuid() -> io::Result<(libc::uid_t, libc::uid_t, libc::uid_t)> {
    let (mut real, mut effective, mut saved) = (0, 0, 0);
    // SAFETY: three live locals to write to.
    check(unsafe { libc::getresuid(&mut real, &mut effective, &mut saved) })?;
    Ok((real, effective, saved))
}

/// The supplementary groups of the calling thread.
fn supplementary_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a count of 0 asks for the number of groups only.
    let count = check(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut groups = vec![0; count as usize];
    // SAFETY: `groups` has room for `count` entries, as passed.
    let count = check(unsafe { libc::getgroups(count, groups.as_mut_ptr()) })?;
    groups.truncate(count as usize);
    Ok(groups)
}

/// Real, effective and saved group ids.
fn resgid() -> io::Result<(libc::gid_t, libc::gid_t, libc::gid_t)> {
    let (mut real, mut effective, mut saved) = (0, 0, 0);
    // SAFETY: three live locals to write to.
    check(unsafe { libc::getresgid(&mut real, &mut effective, &mut saved) })?;
    Ok((real, effective, saved))
}

/// Forks the cleanup parent (see the module documentation). Returns only in
/// the child, which goes on with the daemon; the parent waits for it,
/// removes `socket_path` if it is still the file bound now, and exits.
/// Must be called while the process has a single thread.
pub fn split_cleanup_parent(socket_path: &Path) -> io::Result<()> {
    require_single_thread()?;
    let identity = fs::symlink_metadata(socket_path).map(|m| (m.dev(), m.ino()))?;
    // Blocked before the fork, so that a SIGTERM that comes right after it
    // is not lost in the parent (it is waited for with sigwaitinfo).
    // SIGUSR1 ("the network changed") is passed on like the other two.
    let signals = SignalSet::of(&[libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGCHLD])?;
    let previous = signals.block()?;
    match super::process::fork() {
        Err(e) => {
            let _ = previous.set_mask();
            Err(e)
        }
        Ok(None) => {
            previous.set_mask()?;
            // Stop if the cleanup parent is gone (killed with SIGKILL).
            // The death signal is reset by credential changes, so
            // `drop_privileges` is followed by another call in the daemon.
            stop_with_parent()?;
            Ok(())
        }
        Ok(Some(child)) => {
            let code = cleanup_parent(child, &signals, socket_path, identity);
            std::process::exit(code)
        }
    }
}

/// Asks for SIGTERM when the parent process dies. Call again after
/// [`drop_privileges`], which clears the setting.
pub fn stop_with_parent() -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong)
}

/// The cleanup parent's life: no descriptors, only `CAP_KILL`, forward
/// SIGINT/SIGTERM, wait, remove the socket file, return the exit status.
fn cleanup_parent(
    child: libc::pid_t,
    signals: &SignalSet,
    socket_path: &Path,
    identity: (u64, u64),
) -> i32 {
    close_descriptors_from(3);
    if let Err(e) = keep_only_kill().and_then(|()| prctl(libc::PR_SET_NO_NEW_PRIVS, 1)) {
        log::error!("cleanup parent: cannot give up capabilities: {e}");
    }
    let status = loop {
        match signals.wait() {
            Ok(libc::SIGCHLD) => match reap(child) {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => {
                    log::error!("cleanup parent: waiting for pid {child}: {e}");
                    break ChildEnd::Signal(0);
                }
            },
            Ok(signal) => {
                // SAFETY: kill takes integers; `child` is our own child,
                // not yet reaped, so the pid cannot have been reused.
                if unsafe { libc::kill(child, signal) } != 0 {
                    let e = io::Error::last_os_error();
                    log::error!("cleanup parent: cannot pass signal {signal} on: {e}");
                }
            }
            Err(e) => log::error!("cleanup parent: sigwaitinfo: {e}"),
        }
    };
    let still_ours =
        fs::symlink_metadata(socket_path).is_ok_and(|m| (m.dev(), m.ino()) == identity);
    if still_ours {
        if let Err(e) = fs::remove_file(socket_path) {
            log::error!("cannot remove {}: {e}", socket_path.display());
        }
    }
    status.exit_code()
}

/// Reduces the capabilities to `CAP_KILL`, or to none where it was not
/// permitted to begin with (a service manager's bounding set without it:
/// signals then reach the child only from elsewhere, such as the manager).
fn keep_only_kill() -> io::Result<()> {
    let permitted = current_capabilities()?.permitted;
    let kill_permitted = permitted & capability_mask(&[CAP_KILL]) != 0;
    set_capabilities(if kill_permitted { &[CAP_KILL] } else { &[] })
}

/// How the daemon child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildEnd {
    Exited(i32),
    Signal(i32),
}

impl ChildEnd {
    /// The exit status of the cleanup parent: the child's, 0 when it was
    /// stopped by SIGINT or SIGTERM, 128 + signal for other signals.
    fn exit_code(self) -> i32 {
        match self {
            ChildEnd::Exited(code) => code,
            ChildEnd::Signal(libc::SIGINT | libc::SIGTERM) => 0,
            ChildEnd::Signal(signal) => {
                log::error!("the daemon process was killed by signal {signal}");
                128 + signal
            }
        }
    }
}

/// `waitpid(child, WNOHANG)`: how it ended, or `None` if it still runs.
fn reap(child: libc::pid_t) -> io::Result<Option<ChildEnd>> {
    let mut status = 0;
    // SAFETY: `status` is a live local for the kernel to write.
    let pid = check(unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) })?;
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFEXITED(status) {
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    } else {
        ChildEnd::Signal(libc::WTERMSIG(status))
    }))
}

/// Closes every descriptor from `first` up: `close_range(2)` (Linux 5.9),
/// else one by one from `/proc/self/fd`. Only for a process that will not
/// return to code holding those descriptors.
fn close_descriptors_from(first: libc::c_uint) {
    // SAFETY: close_range takes integers; the caller never uses the closed
    // descriptors again (it exits without returning).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if ret == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<libc::c_int> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &libc::c_int| fd >= first as libc::c_int)
        .collect();
    for fd in fds {
        // SAFETY: as above; closing the directory's own (already closed)
        // descriptor just fails with EBADF.
        unsafe { libc::close(fd) };
    }
}

/// A set of signals, to block and wait for.
struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn of(signals: &[libc::c_int]) -> io::Result<SignalSet> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t.
        check(unsafe { libc::sigemptyset(&mut set) })?;
        for &signal in signals {
            // SAFETY: as above; invalid numbers give EINVAL.
            check(unsafe { libc::sigaddset(&mut set, signal) })?;
        }
        Ok(SignalSet(set))
    }

    /// Blocks the set; returns the previous mask.
    fn block(&self) -> io::Result<SignalSet> {
        // SAFETY: sigset_t is plain data, filled in by sigprocmask below.
        let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are live sigset_t values.
        check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, &mut previous) })?;
        Ok(SignalSet(previous))
    }

    /// Makes this set the signal mask.
    fn set_mask(&self) -> io::Result<()> {
        // SAFETY: a live sigset_t; the old mask is not asked for.
        check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) })
            .map(drop)
    }

    /// Waits for one of the (blocked) signals of the set.
    fn wait(&self) -> io::Result<libc::c_int> {
        loop {
            // SAFETY: a live sigset_t; no siginfo is asked for.
            let ret = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
            match check(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_put_each_capability_on_its_bit() {
        assert_eq!(capability_mask(&KEPT_CAPABILITIES), 0x1400);
        assert_eq!(capability_mask(&[CAP_KILL]), 0x20);
        assert_eq!(capability_mask(&[]), 0);
        assert_eq!(capability_mask(&[40]), 1 << 40);
    }

    #[test]
    fn known_accounts_resolve_and_unknown_ones_are_refused() {
        let root = lookup_user("root").unwrap().expect("root exists");
        assert_eq!((root.0.as_str(), root.1), ("root", 0));
        assert_eq!(lookup_user("0").unwrap().map(|u| u.1), Some(0));
        assert!(lookup_user("fg-no-such-user").unwrap().is_none());
        assert!(lookup_user("a\0b").unwrap().is_none());
        let error = resolve("fg-no-such-user", None).unwrap_err();
        assert_eq!(error.to_string(), "unknown user 'fg-no-such-user'");
        assert!(resolve("root", None).is_err(), "uid 0 is refused");
        if let Ok(nobody) = resolve("nobody", None) {
            assert_ne!(nobody.uid, 0);
            assert!(resolve("nobody", Some("fg-no-such-group")).is_err());
            let numeric = resolve(&nobody.uid.to_string(), Some(&nobody.gid.to_string())).unwrap();
            assert_eq!((numeric.uid, numeric.gid), (nobody.uid, nobody.gid));
            assert_eq!(numeric.user, nobody.user);
        }
    }

    #[test]
    fn capabilities_of_this_thread_can_be_read() {
        let sets = current_capabilities().unwrap();
        assert_eq!(sets.effective & !sets.permitted, 0, "effective ⊆ permitted");
    }

    #[test]
    fn supplementary_groups_match_proc() {
        let status = fs::read_to_string("/proc/thread-self/status").unwrap();
        let mut listed: Vec<libc::gid_t> = status
            .lines()
            .find_map(|line| line.strip_prefix("Groups:"))
            .unwrap()
            .split_whitespace()
            .map(|gid| gid.parse().unwrap())
            .collect();
        let mut groups = supplementary_groups().unwrap();
        groups.sort_unstable();
        listed.sort_unstable();
        assert_eq!(groups, listed);
    }

    #[test]
    fn child_ends_map_to_exit_codes() {
        assert_eq!(ChildEnd::Exited(0).exit_code(), 0);
        assert_eq!(ChildEnd::Exited(3).exit_code(), 3);
        assert_eq!(ChildEnd::Signal(libc::SIGTERM).exit_code(), 0);
        assert_eq!(ChildEnd::Signal(libc::SIGKILL).exit_code(), 128 + 9);
    }

    #[test]
    fn threads_are_counted() {
        let (started, wait) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            started.send(()).unwrap();
            let _ = finished.recv();
        });
        wait.recv().unwrap();
        // This thread and the helper at least (the harness may run more).
        assert!(thread_count().unwrap() >= 2);
        assert!(require_single_thread().is_err());
        drop(finish);
        helper.join().unwrap();
    }

    #[test]
    fn refused_switches_name_the_missing_capabilities() {
        let refused = explain_permission_error(io::Error::from_raw_os_error(libc::EPERM));
        assert!(refused
            .to_string()
            .contains("CAP_SETUID, CAP_SETGID and CAP_SETPCAP"));
        let other = explain_permission_error(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(other.raw_os_error(), Some(libc::EINVAL));
    }
}
