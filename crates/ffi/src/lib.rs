//! A C ABI for Ferroguard's WireGuard engine, so that apps in any language
//! can embed it: the caller owns the sockets, the TUN descriptor and the
//! clock, and moves bytes in and out through these functions.
//!
//! All `unsafe` of the crate is in this file, at the boundary: turning
//! pointers and lengths from C into references and slices. Every such step
//! names what it relies on in a `// SAFETY:` comment; everything behind it
//! ([`engine`], [`uapi`]) is safe Rust.
//!
//! # Rules every function keeps
//! - **Errors** are negative return codes (`FG_ERR_*`); the reason, as text,
//!   is in [`fg_last_error`] (per thread). Never a key in a message.
//! - **Null and short buffers** give `FG_ERR_NULL` or
//!   `FG_ERR_BUFFER_TOO_SMALL`, never undefined behaviour.
//! - **No panic crosses the boundary**: each call runs under
//!   `catch_unwind`; a panic returns `FG_ERR_PANIC` and marks the handle
//!   poisoned (every later call on it returns `FG_ERR_POISONED`; free it).
//!   This needs a build that unwinds (`cargo build --profile ffi`, or any
//!   profile with `panic = "unwind"`); under `panic = "abort"` a panic ends
//!   the process instead, which is still never undefined behaviour.
//! - **Threads**: a handle may be used from any thread, but by one at a
//!   time: calls on the same handle must not overlap (hold a lock around
//!   them). Different handles are independent.
//! - **Ownership**: a handle from [`fg_device_new`] belongs to the caller
//!   until [`fg_device_free`]. Every buffer passed in stays the caller's and
//!   is only used during the call.
//! - **Time** is the caller's monotonic clock in nanoseconds from any origin
//!   (`now_ns`); it must not go backwards. Running it faster runs the
//!   protocol faster (handy in tests).
// The C boundary is this file (and its tests): `unsafe` is allowed here and
// forbidden in the safe modules below it (`engine`, `uapi`).
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![allow(non_camel_case_types)]

pub mod engine;
pub mod uapi;

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::UNIX_EPOCH;

use engine::{Engine, Received, Sent};
use zeroize::Zeroizing;

/// Success.
pub const FG_OK: i32 = 0;
/// A required pointer was NULL.
pub const FG_ERR_NULL: i32 = -1;
/// An output buffer is too small; where a function has a length output, it
/// holds the size needed, and nothing was consumed.
pub const FG_ERR_BUFFER_TOO_SMALL: i32 = -2;
/// An argument is malformed (not a key, not an address, not an IP packet).
pub const FG_ERR_INVALID: i32 = -3;
/// No peer has this id (removed, or never added).
pub const FG_ERR_NO_SUCH_PEER: i32 = -4;
/// The engine panicked (a bug): the call did nothing reliable and the
/// handle is now poisoned.
pub const FG_ERR_PANIC: i32 = -5;
/// An earlier call panicked; the handle can only be freed.
pub const FG_ERR_POISONED: i32 = -6;
/// The system's random generator failed.
pub const FG_ERR_RANDOM: i32 = -7;

/// [`fg_send_packet`]: encrypted, a datagram waits in [`fg_poll_transmit`].
pub const FG_SEND_READY: i32 = 0;
/// [`fg_send_packet`]: held until the handshake it started completes.
pub const FG_SEND_QUEUED: i32 = 1;
/// [`fg_send_packet`]: no peer's allowed IPs contain the destination.
pub const FG_SEND_NO_ROUTE: i32 = 2;
/// [`fg_send_packet`]: the peer has no endpoint yet.
pub const FG_SEND_NO_ENDPOINT: i32 = 3;

/// [`fg_receive_datagram`]: handshake, cookie or keepalive handled.
pub const FG_RECV_HANDLED: i32 = 0;
/// [`fg_receive_datagram`]: an IP packet for the tunnel is in `out`.
pub const FG_RECV_DELIVER: i32 = 1;
/// [`fg_receive_datagram`]: dropped (forged, replayed, unknown; counted).
pub const FG_RECV_DROPPED: i32 = 2;

/// An engine. Opaque: made by [`fg_device_new`], freed by [`fg_device_free`].
pub struct fg_device {
    engine: Engine,
    poisoned: bool,
}

/// A UDP address: `family` 4 or 6, `addr` the 4 (first bytes, rest zero)
/// or 16 address bytes in network order, `port` in host order. IPv6 scope
/// ids are not carried.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct fg_addr {
    /// 4 or 6.
    pub family: u8,
    /// The port, host byte order.
    pub port: u16,
    /// The address, network byte order.
    pub addr: [u8; 16],
}

/// A peer's counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct fg_peer_stats {
    /// WireGuard bytes received from the peer (as `wg show` counts them).
    pub rx_bytes: u64,
    /// WireGuard bytes sent to the peer.
    pub tx_bytes: u64,
    /// WireGuard messages received.
    pub rx_packets: u64,
    /// WireGuard messages sent.
    pub tx_packets: u64,
    /// Handshakes completed (a new session in use).
    pub handshakes_completed: u64,
    /// Datagrams from this peer dropped after it was identified.
    pub drops: u64,
    /// Time of the last handshake, nanoseconds since the Unix epoch on the
    /// engine's wall clock (see "Time" above); 0 = never.
    pub last_handshake_unix_ns: u64,
}

/// A failure: the code to return and the text for [`fg_last_error`].
struct Fail(i32, String);

impl Fail {
    fn null(what: &str) -> Fail {
        Fail(FG_ERR_NULL, format!("{what} is NULL"))
    }
    fn invalid(message: impl Into<String>) -> Fail {
        Fail(FG_ERR_INVALID, message.into())
    }
    fn short(what: &str, needed: usize) -> Fail {
        Fail(
            FG_ERR_BUFFER_TOO_SMALL,
            format!("{what} too small: {needed} bytes needed"),
        )
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Runs `body` with panics caught; a failure's text goes to the thread's
/// last error. Returns the body's code, or the failure's.
fn guarded(body: impl FnOnce() -> Result<i32, Fail>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(Fail(code, message))) => {
            set_last_error(message);
            code
        }
        Err(_) => {
            set_last_error("the engine panicked (a bug; please report it)".into());
            FG_ERR_PANIC
        }
    }
}

/// [`guarded`] on a handle: NULL and poisoned handles are refused, and a
/// panic poisons the handle.
fn with_device(device: *mut fg_device, body: impl FnOnce(&mut Engine) -> Result<i32, Fail>) -> i32 {
    // SAFETY: the caller keeps the contract of every function taking a
    // handle: NULL or a pointer from fg_device_new not yet freed, used by
    // one thread at a time, so this is the only reference to it now.
    let Some(handle) = (unsafe { device.as_mut() }) else {
        set_last_error("device is NULL".into());
        return FG_ERR_NULL;
    };
    if handle.poisoned {
        set_last_error("an earlier call panicked: the handle can only be freed".into());
        return FG_ERR_POISONED;
    }
    let code = guarded(|| body(&mut handle.engine));
    if code == FG_ERR_PANIC {
        handle.poisoned = true;
    }
    code
}

/// [`with_device`] for a call about one peer: an unknown id is refused.
fn with_peer(
    device: *mut fg_device,
    peer: u64,
    body: impl FnOnce(&mut Engine, ferroguard_proto::peer::PeerId) -> Result<i32, Fail>,
) -> i32 {
    with_device(device, |engine| {
        let id = peer_of(engine, peer)?;
        body(engine, id)
    })
}

/// [`with_peer`] for a call with a prefix string ("10.0.0.0/24").
///
/// # Safety
/// `prefix` must be NULL or point to a NUL-terminated string.
unsafe fn with_peer_prefix(
    device: *mut fg_device,
    peer: u64,
    prefix: *const c_char,
    body: impl FnOnce(&mut Engine, ferroguard_proto::peer::PeerId, &str) -> Result<i32, String>,
) -> i32 {
    with_peer(device, peer, |engine, id| {
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let prefix = unsafe { text(prefix, "prefix") }?;
        body(engine, id, prefix).map_err(Fail::invalid)
    })
}

/// The `len` bytes at `ptr` (NULL allowed when `len` is 0).
///
/// # Safety
/// A non-NULL `ptr` must be valid for reads of `len` bytes, unchanged for
/// the duration of the call.
unsafe fn input<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Fail::null(what));
    }
    if len > isize::MAX as usize {
        return Err(Fail::invalid(format!("{what}: length out of range")));
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes that
    // nothing writes during the call.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The `cap` writable bytes at `ptr` (NULL allowed when `cap` is 0).
///
/// # Safety
/// A non-NULL `ptr` must be valid for writes of `cap` bytes, not read or
/// written by anything else during the call.
unsafe fn output<'a>(ptr: *mut u8, cap: usize, what: &str) -> Result<&'a mut [u8], Fail> {
    if cap == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Fail::null(what));
    }
    if cap > isize::MAX as usize {
        return Err(Fail::invalid(format!("{what}: length out of range")));
    }
    // SAFETY: non-NULL, and the caller promises `cap` writable bytes that
    // nothing else touches during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, cap) })
}

/// A 32-byte key at `ptr`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reads of 32 bytes.
unsafe fn key(ptr: *const u8, what: &str) -> Result<[u8; 32], Fail> {
    if ptr.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL, and the caller promises 32 readable bytes. Read
    // unaligned: a key is bytes and may sit anywhere.
    Ok(unsafe { ptr.cast::<[u8; 32]>().read_unaligned() })
}

/// Writes `value` through `ptr`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for writes of a `T`, suitably aligned.
unsafe fn put<T>(ptr: *mut T, value: T, what: &str) -> Result<(), Fail> {
    if ptr.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL, and the caller promises a writable, aligned `T`.
    unsafe { ptr.write(value) };
    Ok(())
}

/// The value at `ptr`.
///
/// # Safety
/// A non-NULL `ptr` must be valid for reads of a `T`, suitably aligned.
unsafe fn get<T: Copy>(ptr: *const T, what: &str) -> Result<T, Fail> {
    // SAFETY: the caller promises NULL or a readable, aligned `T`.
    unsafe { ptr.as_ref() }
        .copied()
        .ok_or_else(|| Fail::null(what))
}

fn peer_of(engine: &Engine, id: u64) -> Result<ferroguard_proto::peer::PeerId, Fail> {
    engine
        .peer(id)
        .ok_or_else(|| Fail(FG_ERR_NO_SUCH_PEER, format!("no peer with id {id}")))
}

fn socket_addr(addr: fg_addr) -> Result<SocketAddr, Fail> {
    let ip = match addr.family {
        4 => IpAddr::V4(Ipv4Addr::new(
            addr.addr[0],
            addr.addr[1],
            addr.addr[2],
            addr.addr[3],
        )),
        6 => IpAddr::V6(Ipv6Addr::from(addr.addr)),
        other => return Err(Fail::invalid(format!("address family {other}: not 4 or 6"))),
    };
    Ok(SocketAddr::new(ip, addr.port))
}

fn fg_addr_of(addr: SocketAddr) -> fg_addr {
    let mut out = fg_addr {
        family: 4,
        port: addr.port(),
        addr: [0; 16],
    };
    match addr.ip() {
        IpAddr::V4(v4) => out.addr[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => {
            out.family = 6;
            out.addr = v6.octets();
        }
    }
    out
}

/// A C string's text (UTF-8).
///
/// # Safety
/// A non-NULL `text` must point to a NUL-terminated string.
unsafe fn text<'a>(text: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if text.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let c = unsafe { std::ffi::CStr::from_ptr(text) };
    c.to_str()
        .map_err(|_| Fail::invalid(format!("{what} is not UTF-8")))
}

// ----- life -----------------------------------------------------------------

/// Creates an engine with this private key and no peers.
///
/// - `private_key`: 32 bytes, read during the call (the engine keeps its
///   own copy, wiped when freed; the caller should wipe its own).
/// - `seed`: NULL to seed the engine's generator (ephemeral keys, indices,
///   jitter) from the system, or 32 bytes from a cryptographically secure
///   source (tests may fix it to replay a run).
///
/// Returns the handle, owned by the caller until [`fg_device_free`], or
/// NULL on failure (see [`fg_last_error`]). Thread-safe.
///
/// # Safety
/// `private_key` is NULL or 32 readable bytes; `seed` is NULL or 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fg_device_new(private_key: *const u8, seed: *const u8) -> *mut fg_device {
    let mut made = None;
    let code = guarded(|| {
        // SAFETY: the caller passes NULL or 32 readable bytes for each.
        let private = Zeroizing::new(unsafe { key(private_key, "private_key") }?);
        let mut seed_bytes = Zeroizing::new([0u8; 32]);
        if seed.is_null() {
            getrandom::fill(seed_bytes.as_mut())
                .map_err(|e| Fail(FG_ERR_RANDOM, format!("no system randomness: {e}")))?;
        } else {
            // SAFETY: non-NULL, so 32 readable bytes by the contract.
            *seed_bytes = unsafe { key(seed, "seed") }?;
        }
        made = Some(Box::new(fg_device {
            engine: Engine::new(*private, *seed_bytes),
            poisoned: false,
        }));
        Ok(FG_OK)
    });
    match made {
        Some(handle) if code == FG_OK => Box::into_raw(handle),
        _ => std::ptr::null_mut(),
    }
}

/// Frees an engine and wipes its keys. NULL does nothing. The handle must
/// not be used again, and no other call on it may be running.
///
/// # Safety
/// `device` is NULL or a handle from `fg_device_new`, not freed before and not in use; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn fg_device_free(device: *mut fg_device) {
    if device.is_null() {
        return;
    }
    // SAFETY: a non-NULL handle came from Box::into_raw in fg_device_new
    // and, by the contract, is freed once and not in use.
    let handle = unsafe { Box::from_raw(device) };
    // Dropping runs the engine's destructors (which wipe keys); a panic in
    // one must not cross the boundary.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(handle)));
}

/// Writes our public key (32 bytes) to `out`.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `out` is NULL or 32 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fg_device_public_key(device: *mut fg_device, out: *mut u8) -> i32 {
    with_device(device, |engine| {
        let public = engine
            .device
            .public_key()
            .ok_or_else(|| Fail::invalid("no private key"))?;
        // SAFETY: the caller passes NULL or 32 writable bytes.
        let out = unsafe { output(out, 32, "out") }?;
        out.copy_from_slice(public.as_bytes());
        Ok(FG_OK)
    })
}

/// Returns the library version, a static NUL-terminated string (never
/// freed by the caller). Thread-safe.
#[no_mangle]
pub extern "C" fn fg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Copies the calling thread's last error text, NUL-terminated and cut to
/// fit, into `buf` (`cap` bytes; NULL with 0 only asks the length). Returns
/// the full length without the NUL (0: no error yet). Thread-safe: each
/// thread has its own last error.
///
/// # Safety
/// `buf` is NULL (then `cap` must be 0) or `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fg_last_error(buf: *mut c_char, cap: usize) -> usize {
    let message = LAST_ERROR.with(|e| e.borrow().clone());
    if cap > 0 && !buf.is_null() {
        let n = message.len().min(cap - 1);
        // SAFETY: the caller promises `cap` writable bytes at `buf`;
        // n + 1 <= cap.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    message.len()
}

// ----- peers -------------------------------------------------------------------

/// Adds the peer with this public key (32 bytes), or finds it if present,
/// and writes its id to `peer`. Our own public key is `FG_ERR_INVALID`.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `public_key` is NULL or 32 readable bytes; `peer` is NULL or a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_add(
    device: *mut fg_device,
    public_key: *const u8,
    peer: *mut u64,
) -> i32 {
    with_device(device, |engine| {
        // SAFETY: the caller passes NULL or 32 readable bytes.
        let public = unsafe { key(public_key, "public_key") }?;
        let id = engine
            .add_peer(public)
            .ok_or_else(|| Fail::invalid("that is our own public key"))?;
        // SAFETY: the caller passes NULL or a writable uint64_t.
        unsafe { put(peer, id.0, "peer") }?;
        Ok(FG_OK)
    })
}

/// Removes a peer with its sessions and allowed IPs.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_remove(device: *mut fg_device, peer: u64) -> i32 {
    with_peer(device, peer, |engine, id| {
        engine.device.remove_peer(id);
        Ok(FG_OK)
    })
}

/// Sets where to send the peer's datagrams (`endpoint` read during the call).
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `endpoint` is NULL or a readable `fg_addr`.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_set_endpoint(
    device: *mut fg_device,
    peer: u64,
    endpoint: *const fg_addr,
) -> i32 {
    with_peer(device, peer, |engine, id| {
        // SAFETY: the caller passes NULL or a readable fg_addr.
        let addr = socket_addr(unsafe { get(endpoint, "endpoint") }?)?;
        engine.device.set_endpoint(id, addr);
        Ok(FG_OK)
    })
}

/// Routes `prefix` ("10.0.0.0/24", "fd00::/64", or a bare address for a
/// host route; a NUL-terminated string) to the peer, taking it from any
/// other peer.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `prefix` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_add_allowed_ip(
    device: *mut fg_device,
    peer: u64,
    prefix: *const c_char,
) -> i32 {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    unsafe {
        with_peer_prefix(device, peer, prefix, |engine, id, prefix| {
            engine.add_allowed_ip(id, prefix).map(|()| FG_OK)
        })
    }
}

/// Removes `prefix` (as in [`fg_peer_add_allowed_ip`]) if it is the
/// peer's. Returns 1 if it was removed, 0 if it was not the peer's.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `prefix` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_remove_allowed_ip(
    device: *mut fg_device,
    peer: u64,
    prefix: *const c_char,
) -> i32 {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    unsafe {
        with_peer_prefix(device, peer, prefix, |engine, id, prefix| {
            engine.remove_allowed_ip(id, prefix).map(i32::from)
        })
    }
}

/// Removes every allowed IP of the peer.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_clear_allowed_ips(device: *mut fg_device, peer: u64) -> i32 {
    with_peer(device, peer, |engine, id| {
        engine.device.clear_allowed_ips(id);
        Ok(FG_OK)
    })
}

/// Sets the peer's preshared key: 32 bytes, or NULL for none. Used from the
/// next handshake.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `preshared_key` is NULL or 32 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_set_preshared_key(
    device: *mut fg_device,
    peer: u64,
    preshared_key: *const u8,
) -> i32 {
    with_peer(device, peer, |engine, id| {
        let psk = if preshared_key.is_null() {
            None
        } else {
            // SAFETY: non-NULL, so 32 readable bytes by the contract.
            Some(Zeroizing::new(unsafe {
                key(preshared_key, "preshared_key")
            }?))
        };
        engine.set_preshared_key(id, psk.map(|k| *k));
        Ok(FG_OK)
    })
}

/// Sets the persistent keepalive interval in seconds (0 = off). Turning it
/// on queues a keepalive at once.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_set_keepalive(
    device: *mut fg_device,
    peer: u64,
    now_ns: u64,
    seconds: u16,
) -> i32 {
    with_peer(device, peer, |engine, id| {
        let now = engine.clock.now(now_ns);
        engine.device.set_persistent_keepalive(now, id, seconds);
        Ok(FG_OK)
    })
}

/// Writes the peer's counters to `stats`.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `stats` is NULL or a writable `fg_peer_stats`.
#[no_mangle]
pub unsafe extern "C" fn fg_peer_get_stats(
    device: *mut fg_device,
    peer: u64,
    stats: *mut fg_peer_stats,
) -> i32 {
    with_peer(device, peer, |engine, id| {
        let p = engine.device.peer(id).expect("peer_of checked it");
        let last = p
            .last_handshake()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
        let drops = ferroguard_proto::device::DropReason::ALL
            .iter()
            .map(|r| p.stats().drops.get(*r))
            .sum();
        let value = fg_peer_stats {
            rx_bytes: p.rx_bytes(),
            tx_bytes: p.tx_bytes(),
            rx_packets: p.stats().rx_packets,
            tx_packets: p.stats().tx_packets,
            handshakes_completed: p.stats().handshakes_completed,
            drops,
            last_handshake_unix_ns: last,
        };
        // SAFETY: the caller passes NULL or a writable fg_peer_stats.
        unsafe { put(stats, value, "stats") }?;
        Ok(FG_OK)
    })
}

// ----- the data path ----------------------------------------------------------------

/// Hands in an IP packet read from the tunnel (`len` bytes at `packet`,
/// read during the call). Returns an `FG_SEND_*` outcome: with
/// `FG_SEND_READY` the datagram waits in [`fg_poll_transmit`]; a handshake
/// it starts waits there too. Not an IPv4/IPv6 packet: `FG_ERR_INVALID`.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `packet` is NULL (then `len` must be 0) or `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fg_send_packet(
    device: *mut fg_device,
    now_ns: u64,
    packet: *const u8,
    len: usize,
) -> i32 {
    with_device(device, |engine| {
        // SAFETY: the caller passes NULL or `len` readable bytes.
        let packet = unsafe { input(packet, len, "packet") }?;
        let sent = engine
            .send(now_ns, packet)
            .ok_or_else(|| Fail::invalid("not an IPv4 or IPv6 packet, or too long"))?;
        Ok(match sent {
            Sent::Ready => FG_SEND_READY,
            Sent::Queued => FG_SEND_QUEUED,
            Sent::NoRoute => FG_SEND_NO_ROUTE,
            Sent::NoEndpoint => FG_SEND_NO_ENDPOINT,
        })
    })
}

/// Hands in a UDP datagram received from `from` (`len` bytes at `data`).
/// `out` (`cap` bytes, at least `len`) receives the decrypted IP packet on
/// `FG_RECV_DELIVER`, its length in `*out_len`. `data` and `out` may be the
/// same buffer (decrypted in place) but must not otherwise overlap.
/// Answers (handshake responses, keepalives) wait in [`fg_poll_transmit`].
/// Returns an `FG_RECV_*` outcome, or an error.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `from` is NULL or a readable `fg_addr`; `data` is `len` readable bytes; `out` is `cap` writable bytes (the same buffer as `data`, or not overlapping it); `out_len` is NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn fg_receive_datagram(
    device: *mut fg_device,
    now_ns: u64,
    from: *const fg_addr,
    data: *const u8,
    len: usize,
    out: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> i32 {
    with_device(device, |engine| {
        // SAFETY: the caller passes NULL or a readable fg_addr.
        let from = socket_addr(unsafe { get(from, "from") }?)?;
        if out_len.is_null() {
            return Err(Fail::null("out_len"));
        }
        if cap < len {
            // SAFETY: checked non-NULL; the caller promises a writable size_t.
            unsafe { out_len.write(len) };
            return Err(Fail::short("out", len));
        }
        let (start, end) = (out as usize, (out as usize).saturating_add(cap));
        let (d_start, d_end) = (data as usize, (data as usize).saturating_add(len));
        if data != out.cast_const() && len > 0 && d_start < end && start < d_end {
            return Err(Fail::invalid(
                "data and out overlap without being the same buffer",
            ));
        }
        // SAFETY: the caller promises `cap` writable bytes at `out`, which
        // nothing else uses during the call.
        let buf = unsafe { output(out, cap, "out") }?;
        if data != out.cast_const() {
            // SAFETY: `len` readable bytes at `data`, not overlapping `out`
            // (checked above), so no reference here aliases `buf`.
            let src = unsafe { input(data, len, "data") }?;
            buf[..len].copy_from_slice(src);
        }
        let outcome = engine.receive(now_ns, from, &mut buf[..len]);
        let (code, n) = match outcome {
            Received::Deliver(n) => (FG_RECV_DELIVER, n),
            Received::Handled => (FG_RECV_HANDLED, 0),
            Received::Dropped => (FG_RECV_DROPPED, 0),
        };
        // SAFETY: checked non-NULL; the caller promises a writable size_t.
        unsafe { out_len.write(n) };
        Ok(code)
    })
}

/// Takes the next datagram to send: copies it to `out` (`cap` bytes), its
/// length to `*len` and its destination to `*to`, and returns 1; returns 0
/// when none waits. If `cap` is too small, `*len` gets the size needed,
/// the datagram stays, and `FG_ERR_BUFFER_TOO_SMALL` is returned (1500
/// bytes, or the tunnel MTU + 80, always suffice). Call until it returns 0
/// after every other call.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `out` is `cap` writable bytes; `len` and `to` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fg_poll_transmit(
    device: *mut fg_device,
    out: *mut u8,
    cap: usize,
    len: *mut usize,
    to: *mut fg_addr,
) -> i32 {
    with_device(device, |engine| {
        if len.is_null() || to.is_null() {
            return Err(Fail::null("len or to"));
        }
        let Some(t) = engine.peek_transmit() else {
            return Ok(0);
        };
        let n = t.data.len();
        // SAFETY: checked non-NULL; the caller promises a writable size_t.
        unsafe { len.write(n) };
        if cap < n {
            return Err(Fail::short("out", n));
        }
        // SAFETY: the caller promises `cap` writable bytes at `out`.
        let buf = unsafe { output(out, cap, "out") }?;
        buf[..n].copy_from_slice(&t.data);
        let addr = fg_addr_of(t.endpoint.addr);
        // SAFETY: checked non-NULL; the caller promises a writable fg_addr.
        unsafe { to.write(addr) };
        engine.pop_transmit();
        Ok(1)
    })
}

/// Writes to `*deadline_ns` when [`fg_handle_timeout`] should next be
/// called (caller time) and returns 1; returns 0 when no timer is armed.
/// May be early, never late.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `deadline_ns` is NULL or a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn fg_poll_timeout(device: *mut fg_device, deadline_ns: *mut u64) -> i32 {
    with_device(device, |engine| {
        let Some(deadline) = engine.poll_timeout() else {
            return Ok(0);
        };
        // SAFETY: the caller passes NULL or a writable uint64_t.
        unsafe { put(deadline_ns, deadline, "deadline_ns") }?;
        Ok(1)
    })
}

/// Fires every timer due at `now_ns` (retransmits, keepalives, rekeys, key
/// expiry); datagrams it makes wait in [`fg_poll_transmit`].
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call.
#[no_mangle]
pub unsafe extern "C" fn fg_handle_timeout(device: *mut fg_device, now_ns: u64) -> i32 {
    with_device(device, |engine| {
        engine.handle_timeout(now_ns);
        Ok(FG_OK)
    })
}

/// Tells the engine that the network changed (Wi-Fi to mobile, resume from
/// sleep): it forgets sticky sources and sends every peer that had a
/// session a keepalive and a fresh handshake (at most one initiation per
/// 5 s per peer), all waiting in [`fg_poll_transmit`]. Rebind your sockets
/// first if the old ones are gone.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call.
#[no_mangle]
pub unsafe extern "C" fn fg_network_changed(device: *mut fg_device, now_ns: u64) -> i32 {
    with_device(device, |engine| {
        engine.network_changed(now_ns);
        Ok(FG_OK)
    })
}

/// Smallest `cap` [`fg_uapi`] accepts for a `set=1` request.
pub const FG_UAPI_SET_REPLY_MIN: usize = 32;

/// Runs one request of WireGuard's configuration protocol: `len` bytes of
/// text at `request` (`"get=1\n\n"`, or `"set=1\n"` + `key=value` lines +
/// an empty line, as `wg` sends them; listen_port and fwmark are stored and
/// reported, the sockets being the caller's). The reply text, NUL-terminated,
/// goes to `reply` (`cap` bytes), its length without the NUL to
/// `*reply_len`; it ends with `errno=N` (0 = applied; 22 = refused, nothing
/// changed).
///
/// A `get=1` reply too long for `cap` returns `FG_ERR_BUFFER_TOO_SMALL` with
/// the length needed (without the NUL) in `*reply_len`: retry with more
/// room. A `set=1` request with `cap` below [`FG_UAPI_SET_REPLY_MIN`] is
/// refused before anything is applied. The reply holds the private key:
/// wipe it after use.
///
/// # Safety
/// `device` is NULL or a live handle from `fg_device_new` that no other thread is using during the call; `request` is NULL (then `len` must be 0) or `len` readable bytes; `reply` is `cap` writable bytes; `reply_len` is NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn fg_uapi(
    device: *mut fg_device,
    now_ns: u64,
    request: *const c_char,
    len: usize,
    reply: *mut c_char,
    cap: usize,
    reply_len: *mut usize,
) -> i32 {
    with_device(device, |engine| {
        // SAFETY: the caller passes NULL or `len` readable bytes.
        let request = unsafe { input(request.cast(), len, "request") }?;
        let request =
            std::str::from_utf8(request).map_err(|_| Fail::invalid("request is not UTF-8"))?;
        if reply_len.is_null() {
            return Err(Fail::null("reply_len"));
        }
        if request.starts_with("set=1") && cap < FG_UAPI_SET_REPLY_MIN {
            return Err(Fail::short("reply", FG_UAPI_SET_REPLY_MIN));
        }
        let now = engine.clock.now(now_ns);
        let text = uapi::handle(engine, now, request);
        // SAFETY: checked non-NULL; the caller promises a writable size_t.
        unsafe { reply_len.write(text.len()) };
        if cap < text.len() + 1 {
            return Err(Fail::short("reply", text.len() + 1));
        }
        // SAFETY: the caller promises `cap` writable bytes at `reply`.
        let buf = unsafe { output(reply.cast(), cap, "reply") }?;
        buf[..text.len()].copy_from_slice(text.as_bytes());
        buf[text.len()] = 0;
        Ok(FG_OK)
    })
}

// ----- addresses -------------------------------------------------------------------

/// Converts a `struct sockaddr_in` or `sockaddr_in6` (`len` bytes at `sa`,
/// as `recvfrom` fills them) to an [`fg_addr`]. Thread-safe.
///
/// # Safety
/// `sa` is NULL (then `len` must be 0) or `len` readable bytes; `out` is NULL or a writable `fg_addr`.
#[no_mangle]
pub unsafe extern "C" fn fg_addr_from_sockaddr(
    sa: *const c_void,
    len: usize,
    out: *mut fg_addr,
) -> i32 {
    guarded(|| {
        // SAFETY: the caller passes NULL or `len` readable bytes.
        let bytes = unsafe { input(sa.cast(), len, "sa") }?;
        let addr = sockaddr_to_socket_addr(bytes)?;
        // SAFETY: the caller passes NULL or a writable fg_addr.
        unsafe { put(out, fg_addr_of(addr), "out") }?;
        Ok(FG_OK)
    })
}

/// Writes `addr` as a `struct sockaddr_in` or `sockaddr_in6` to `out`
/// (`cap` bytes, 28 always suffice), its length to `*len`, ready for
/// `sendto`. Thread-safe.
///
/// # Safety
/// `addr` is NULL or a readable `fg_addr`; `out` is `cap` writable bytes; `len` is NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn fg_addr_to_sockaddr(
    addr: *const fg_addr,
    out: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> i32 {
    guarded(|| {
        // SAFETY: the caller passes NULL or a readable fg_addr.
        let addr = socket_addr(unsafe { get(addr, "addr") }?)?;
        let bytes = socket_addr_to_sockaddr(addr);
        if cap < bytes.len() {
            return Err(Fail::short("out", bytes.len()));
        }
        // SAFETY: the caller promises `cap` writable bytes at `out`.
        let buf = unsafe { output(out.cast(), cap, "out") }?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        // SAFETY: the caller passes NULL or a writable size_t.
        unsafe { put(len, bytes.len(), "len") }?;
        Ok(FG_OK)
    })
}

/// Reads a sockaddr from its bytes, field by field (no alignment needed).
fn sockaddr_to_socket_addr(bytes: &[u8]) -> Result<SocketAddr, Fail> {
    let family = bytes
        .get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| Fail::invalid("sockaddr shorter than its family"))?;
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match i32::from(family) {
        libc::AF_INET if bytes.len() >= std::mem::size_of::<libc::sockaddr_in>() => {
            let ip: [u8; 4] = bytes[4..8].try_into().expect("4 bytes");
            Ok(SocketAddr::new(IpAddr::from(ip), port(bytes)))
        }
        libc::AF_INET6 if bytes.len() >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let ip: [u8; 16] = bytes[8..24].try_into().expect("16 bytes");
            Ok(SocketAddr::new(IpAddr::from(ip), port(bytes)))
        }
        _ => Err(Fail::invalid("not a complete sockaddr_in or sockaddr_in6")),
    }
}

/// The bytes of a sockaddr_in / sockaddr_in6 for `addr`.
fn socket_addr_to_sockaddr(addr: SocketAddr) -> Vec<u8> {
    let (family, size) = match addr {
        SocketAddr::V4(_) => (libc::AF_INET, std::mem::size_of::<libc::sockaddr_in>()),
        SocketAddr::V6(_) => (libc::AF_INET6, std::mem::size_of::<libc::sockaddr_in6>()),
    };
    let mut bytes = vec![0u8; size];
    bytes[..2].copy_from_slice(&(family as u16).to_ne_bytes());
    bytes[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => bytes[4..8].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => bytes[8..24].copy_from_slice(&ip.octets()),
    }
    bytes
}

#[cfg(test)]
mod tests;
