//! The C ABI called as C would call it, from Rust.

use super::*;
use std::ptr::{null, null_mut};

fn last_error() -> String {
    let mut buf = [0 as c_char; 256];
    // SAFETY: 256 writable bytes.
    let n = unsafe { fg_last_error(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: fg_last_error wrote a NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    assert_eq!(text.to_bytes().len(), n.min(255));
    text.to_string_lossy().into_owned()
}

struct Node {
    dev: *mut fg_device,
    peer: u64,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: made by fg_device_new, freed once.
        unsafe { fg_device_free(self.dev) };
    }
}

fn addr(last: u8, port: u16) -> fg_addr {
    let mut a = fg_addr {
        family: 4,
        port,
        addr: [0; 16],
    };
    a.addr[..4].copy_from_slice(&[127, 0, 0, last]);
    a
}

/// Two engines configured as each other's peer (A 10.9.0.1, B 10.9.0.2).
fn pair() -> (Node, Node) {
    let make = |k: u8| {
        // SAFETY: 32-byte key and seed.
        let dev = unsafe { fg_device_new([k; 32].as_ptr(), [k; 32].as_ptr()) };
        assert!(!dev.is_null());
        dev
    };
    let (a, b) = (make(1), make(2));
    let public = |dev| {
        let mut key = [0u8; 32];
        // SAFETY: a live handle, 32 writable bytes.
        let result = unsafe { fg_device_public_key(dev, key.as_mut_ptr()) };
        assert_eq!(result, FG_OK);
        key
    };
    let connect = |dev, other, other_tun: &str, port| {
        let mut peer = 0;
        let prefix = std::ffi::CString::new(other_tun).unwrap();
        // SAFETY: live handle, valid pointers.
        unsafe {
            assert_eq!(fg_peer_add(dev, public(other).as_ptr(), &mut peer), FG_OK);
            assert_eq!(fg_peer_set_endpoint(dev, peer, &addr(1, port)), FG_OK);
            assert_eq!(fg_peer_add_allowed_ip(dev, peer, prefix.as_ptr()), FG_OK);
        }
        peer
    };
    let pa = connect(a, b, "10.9.0.2/32", 2);
    let pb = connect(b, a, "10.9.0.1/32", 1);
    (Node { dev: a, peer: pa }, Node { dev: b, peer: pb })
}

fn packet(src: u8, dst: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[3] = 40;
    p[12..16].copy_from_slice(&[10, 9, 0, src]);
    p[16..20].copy_from_slice(&[10, 9, 0, dst]);
    p
}

/// Moves datagrams between the two until quiet; returns the IP packets
/// delivered to (A, B).
fn pump(a: &Node, b: &Node, now: u64) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut delivered = (vec![], vec![]);
    for _ in 0..100 {
        let mut moved = false;
        for (from, to, sink, src) in [
            (a, b, &mut delivered.1, addr(1, 1)),
            (b, a, &mut delivered.0, addr(1, 2)),
        ] {
            let mut buf = [0u8; 2048];
            let (mut len, mut dst) = (0usize, fg_addr::default());
            // SAFETY: live handles, buffers of the sizes given.
            while unsafe {
                fg_poll_transmit(from.dev, buf.as_mut_ptr(), buf.len(), &mut len, &mut dst)
            } == 1
            {
                moved = true;
                let mut out_len = 0;
                let p = buf.as_mut_ptr();
                // SAFETY: in place, as documented.
                let code = unsafe {
                    fg_receive_datagram(to.dev, now, &src, p, len, p, buf.len(), &mut out_len)
                };
                if code == FG_RECV_DELIVER {
                    sink.push(buf[..out_len].to_vec());
                }
            }
        }
        if !moved {
            return delivered;
        }
    }
    panic!("never quiet");
}

#[test]
fn handshake_and_data_both_ways_through_the_abi() {
    let (a, b) = pair();
    let p = packet(1, 2);
    // SAFETY: live handle, `p.len()` readable bytes.
    let result = unsafe { fg_send_packet(a.dev, 0, p.as_ptr(), p.len()) };
    assert_eq!(result, FG_SEND_QUEUED);
    let (_, to_b) = pump(&a, &b, 0);
    assert_eq!(to_b, vec![p]);
    let back = packet(2, 1);
    // SAFETY: as above.
    let result = unsafe { fg_send_packet(b.dev, 0, back.as_ptr(), back.len()) };
    assert_eq!(result, FG_SEND_READY);
    let (to_a, _) = pump(&a, &b, 0);
    assert_eq!(to_a, vec![back]);
    let mut stats = fg_peer_stats::default();
    // SAFETY: live handle, writable struct.
    let result = unsafe { fg_peer_get_stats(a.dev, a.peer, &mut stats) };
    assert_eq!(result, FG_OK);
    assert_eq!(stats.handshakes_completed, 1);
    assert!(stats.rx_bytes > 0 && stats.last_handshake_unix_ns > 0);
    let mut deadline = 0;
    // SAFETY: live handle.
    assert_eq!(unsafe { fg_poll_timeout(a.dev, &mut deadline) }, 1);
    assert!(deadline > 0);
    // SAFETY: live handle.
    assert_eq!(unsafe { fg_network_changed(a.dev, 1) }, FG_OK);
    let (mut len, mut to) = (0, fg_addr::default());
    let mut buf = [0u8; 256];
    // SAFETY: live handle, buffers as given.
    let polled = unsafe { fg_poll_transmit(a.dev, buf.as_mut_ptr(), buf.len(), &mut len, &mut to) };
    assert_eq!(
        (polled, to),
        (1, addr(1, 2)),
        "a keepalive to B after the change"
    );
    let _ = b.peer;
}

#[test]
fn null_and_short_buffers_are_errors_not_crashes() {
    // SAFETY: every call below is given NULL or valid pointers.
    unsafe {
        assert!(fg_device_new(null(), null()).is_null());
        assert_eq!(last_error(), "private_key is NULL");
        assert_eq!(fg_handle_timeout(null_mut(), 0), FG_ERR_NULL);
        assert_eq!(fg_send_packet(null_mut(), 0, null(), 0), FG_ERR_NULL);
    }
    let (a, _b) = pair();
    let p = packet(1, 2);
    // SAFETY: live handle, valid or NULL pointers.
    unsafe {
        assert_eq!(fg_send_packet(a.dev, 0, null(), 40), FG_ERR_NULL);
        assert_eq!(fg_send_packet(a.dev, 0, p.as_ptr(), 3), FG_ERR_INVALID);
        assert_eq!(
            fg_send_packet(a.dev, 0, p.as_ptr(), p.len()),
            FG_SEND_QUEUED
        );
        let (mut len, mut to) = (0, fg_addr::default());
        let mut small = [0u8; 10];
        let code = fg_poll_transmit(a.dev, small.as_mut_ptr(), small.len(), &mut len, &mut to);
        assert_eq!((code, len), (FG_ERR_BUFFER_TOO_SMALL, 148), "an initiation");
        assert!(last_error().contains("148 bytes needed"));
        let mut big = [0u8; 200];
        let code = fg_poll_transmit(a.dev, big.as_mut_ptr(), big.len(), &mut len, &mut to);
        assert_eq!((code, len, big[0]), (1, 148, 1), "still there, then taken");
        let mut out_len = 0;
        let code = fg_receive_datagram(
            a.dev,
            0,
            &to,
            big.as_ptr(),
            148,
            small.as_mut_ptr(),
            10,
            &mut out_len,
        );
        assert_eq!((code, out_len), (FG_ERR_BUFFER_TOO_SMALL, 148));
        let code = fg_receive_datagram(
            a.dev,
            0,
            null(),
            big.as_ptr(),
            148,
            big.as_mut_ptr(),
            200,
            &mut out_len,
        );
        assert_eq!(code, FG_ERR_NULL);
        let overlapping = big.as_mut_ptr().add(1);
        let code = fg_receive_datagram(
            a.dev,
            0,
            &to,
            big.as_ptr(),
            100,
            overlapping,
            150,
            &mut out_len,
        );
        assert_eq!(code, FG_ERR_INVALID);
        let bad = std::ffi::CString::new("10.0.0.0/40").unwrap();
        assert_eq!(
            fg_peer_add_allowed_ip(a.dev, a.peer, bad.as_ptr()),
            FG_ERR_INVALID
        );
        assert_eq!(fg_peer_remove(a.dev, 999), FG_ERR_NO_SUCH_PEER);
        let mut stats = fg_peer_stats::default();
        assert_eq!(
            fg_peer_get_stats(a.dev, 999, &mut stats),
            FG_ERR_NO_SUCH_PEER
        );
        assert_eq!(fg_last_error(null_mut(), 0), "no peer with id 999".len());
    }
}

#[test]
fn a_panic_becomes_an_error_code_and_poisons_the_handle() {
    let (a, _b) = pair();
    let code = with_device(a.dev, |_| panic!("injected"));
    assert_eq!(code, FG_ERR_PANIC);
    assert!(last_error().contains("panicked"));
    // SAFETY: live (poisoned) handle.
    assert_eq!(unsafe { fg_handle_timeout(a.dev, 0) }, FG_ERR_POISONED);
}

#[test]
fn uapi_through_one_function() {
    let (a, _b) = pair();
    let mut reply = [0 as c_char; 2048];
    let mut len = 0;
    let set = "set=1\nlisten_port=4242\n\n";
    // SAFETY: live handle, buffers as given.
    unsafe {
        let code = fg_uapi(
            a.dev,
            0,
            set.as_ptr().cast(),
            set.len(),
            reply.as_mut_ptr(),
            8,
            &mut len,
        );
        assert_eq!(code, FG_ERR_BUFFER_TOO_SMALL, "refused before applying");
        let get = "get=1\n\n";
        let code = fg_uapi(
            a.dev,
            0,
            get.as_ptr().cast(),
            get.len(),
            reply.as_mut_ptr(),
            8,
            &mut len,
        );
        assert_eq!(code, FG_ERR_BUFFER_TOO_SMALL);
        assert!(len > 100, "the length needed");
        assert_eq!(
            fg_uapi(
                a.dev,
                0,
                get.as_ptr().cast(),
                get.len(),
                reply.as_mut_ptr(),
                reply.len(),
                &mut len
            ),
            FG_OK
        );
        let text = std::ffi::CStr::from_ptr(reply.as_ptr()).to_str().unwrap();
        assert_eq!(text.len(), len);
        assert!(text.contains("listen_port=0\n") && text.contains("allowed_ip=10.9.0.2/32\n"));
        let code = fg_uapi(
            a.dev,
            0,
            set.as_ptr().cast(),
            set.len(),
            reply.as_mut_ptr(),
            64,
            &mut len,
        );
        assert_eq!(code, FG_OK);
        assert_eq!(
            std::ffi::CStr::from_ptr(reply.as_ptr()).to_str().unwrap(),
            "errno=0\n\n"
        );
    }
}

#[test]
fn sockaddr_round_trips() {
    for text in ["192.0.2.7:51820", "[2001:db8::9]:443"] {
        let addr: SocketAddr = text.parse().unwrap();
        let mut buf = [0u8; 28];
        let mut len = 0;
        let ours = fg_addr_of(addr);
        let mut back = fg_addr::default();
        // SAFETY: valid pointers and lengths.
        unsafe {
            assert_eq!(
                fg_addr_to_sockaddr(&ours, buf.as_mut_ptr().cast(), 28, &mut len),
                FG_OK
            );
            assert_eq!(
                fg_addr_from_sockaddr(buf.as_ptr().cast(), len, &mut back),
                FG_OK
            );
            assert_eq!(
                fg_addr_from_sockaddr(buf.as_ptr().cast(), 3, &mut back),
                FG_ERR_INVALID
            );
            assert_eq!(
                fg_addr_to_sockaddr(&ours, buf.as_mut_ptr().cast(), 4, &mut len),
                FG_ERR_BUFFER_TOO_SMALL
            );
        }
        assert_eq!(socket_addr(back).ok(), Some(addr));
    }
}

#[test]
fn the_preshared_key_must_match_on_both_sides() {
    let (a, b) = pair();
    let p = packet(1, 2);
    // SAFETY: live handles, 32-byte keys, `p.len()` readable bytes.
    unsafe {
        assert_eq!(
            fg_peer_set_preshared_key(a.dev, a.peer, [7u8; 32].as_ptr()),
            FG_OK
        );
        fg_send_packet(a.dev, 0, p.as_ptr(), p.len());
    }
    assert!(
        pump(&a, &b, 0).1.is_empty(),
        "B has no preshared key: no session"
    );
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            fg_peer_set_preshared_key(b.dev, b.peer, [7u8; 32].as_ptr()),
            FG_OK
        );
        fg_handle_timeout(a.dev, 6_000_000_000); // the retransmission, 5 s later
    }
    assert_eq!(
        pump(&a, &b, 6_000_000_000).1,
        vec![p],
        "same key: delivered"
    );
    // SAFETY: live handle; NULL clears the key.
    let result = unsafe { fg_peer_set_preshared_key(a.dev, a.peer, null()) };
    assert_eq!(result, FG_OK);
}
