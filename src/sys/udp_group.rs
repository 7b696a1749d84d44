//! Several [`UdpSockets`] pairs on one port, one per I/O thread of the
//! parallel data path (`FERROGUARD_IO_THREADS=queues:N`).
//!
//! Every member's sockets are bound with `SO_REUSEPORT`, so the kernel
//! spreads received datagrams over the members by a hash of the 4-tuple:
//! all datagrams of one peer (one source address and port) land in one
//! member, and so on one thread, in the order they arrived. Sending may use
//! any member: they share the port, so the peer sees the same source.
//!
//! A group of one is a plain [`UdpSockets::bind`]: no `SO_REUSEPORT`, so the
//! default data path binds exactly as before.
//!
//! # Port 0 and other owners of the port
//!
//! With `SO_REUSEPORT` the kernel lets any socket of the same user join a
//! port, also on an automatic (port 0) bind, which could then land in
//! another daemon's group. So with port 0 a probe pair without
//! `SO_REUSEPORT` asks the kernel for a port nobody uses, is closed, and the
//! group binds to that port (tried again on `EADDRINUSE`). An explicit port
//! shared with another root process that also sets `SO_REUSEPORT` is not
//! detected: the kernel would split the traffic between them. The daemon
//! runs as root, or as the `--user` account, so only a process of that
//! account can do this.

use std::io;

use super::udp::{bind_pair, with_port_retries, UdpSockets};

/// The UDP socket pairs of the data path, all bound to one port.
#[derive(Debug)]
pub struct SocketGroup {
    members: Vec<UdpSockets>,
}

impl SocketGroup {
    /// Binds `count` pairs (at least one) to `port` (0: a free port the
    /// kernel picks) and sets `fwmark` on all of them (0: none). A group of
    /// one binds as [`UdpSockets::bind`] does.
    pub fn bind(port: u16, fwmark: u32, count: usize) -> io::Result<SocketGroup> {
        if count <= 1 {
            let members = vec![UdpSockets::bind(port, fwmark)?];
            return Ok(SocketGroup { members });
        }
        let group = with_port_retries(port, || {
            let chosen = if port == 0 { free_port()? } else { port };
            bind_members(chosen, count)
        })?;
        if fwmark != 0 {
            group.set_fwmark(fwmark)?;
        }
        Ok(group)
    }

    /// The port every member is bound to.
    pub fn port(&self) -> u16 {
        self.members[0].port()
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: a group has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The pair of I/O thread `lane` (wrapping around, so any lane has one).
    pub fn member(&self, lane: usize) -> &UdpSockets {
        &self.members[lane % self.members.len()]
    }

    /// Sets `SO_MARK` on every socket (0 clears it).
    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.members.iter().try_for_each(|m| m.set_fwmark(mark))
    }

    /// The `SO_MARK` of the sockets (see [`UdpSockets::fwmark`]); an error
    /// if the members differ.
    pub fn fwmark(&self) -> io::Result<u32> {
        let first = self.members[0].fwmark()?;
        for member in &self.members[1..] {
            if member.fwmark()? != first {
                return Err(io::Error::other("the group's sockets have different marks"));
            }
        }
        Ok(first)
    }
}

/// A port free for both families now: bound without `SO_REUSEPORT` (so the
/// kernel cannot hand out a port another group shares), then released.
fn free_port() -> io::Result<u16> {
    Ok(UdpSockets::bind(0, 0)?.port())
}

/// One attempt at `count` pairs on `port` with `SO_REUSEPORT`.
fn bind_members(port: u16, count: usize) -> io::Result<SocketGroup> {
    let members = (0..count)
        .map(|_| bind_pair(port, true))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(SocketGroup { members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::udp::Family;

    #[test]
    fn a_group_of_one_is_a_plain_pair() {
        let group = SocketGroup::bind(0, 0, 1).unwrap();
        assert_eq!(group.len(), 1);
        assert_ne!(group.port(), 0);
        // Without SO_REUSEPORT a second bind to the port is refused.
        let again = SocketGroup::bind(group.port(), 0, 1).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn members_share_one_port_and_keep_others_out() {
        let group = SocketGroup::bind(0, 0, 3).unwrap();
        assert_eq!(group.len(), 3);
        for lane in 0..6 {
            assert_eq!(group.member(lane).port(), group.port());
            assert!(
                group.member(lane).raw_fds().0.is_some()
                    || group.member(lane).raw_fds().1.is_some()
            );
        }
        let fds: std::collections::HashSet<_> =
            (0..3).map(|lane| group.member(lane).raw_fds()).collect();
        assert_eq!(fds.len(), 3, "three distinct pairs");
        // A plain socket (no SO_REUSEPORT) cannot take the port.
        let intruder = UdpSockets::bind(group.port(), 0).unwrap_err();
        assert_eq!(intruder.kind(), io::ErrorKind::AddrInUse);
    }

    /// The property the parallel data path relies on: the kernel hands all
    /// datagrams of one source to one member, in order.
    #[test]
    fn each_source_lands_on_one_member_in_order() {
        let group = SocketGroup::bind(0, 0, 4).unwrap();
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], group.port()));
        let sources: Vec<std::net::UdpSocket> = (0..8)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for round in 0u8..20 {
            for (k, source) in sources.iter().enumerate() {
                source.send_to(&[k as u8, round], target).unwrap();
            }
        }
        // source -> (lanes it arrived on, the rounds in arrival order)
        let mut seen: Vec<(std::collections::BTreeSet<usize>, Vec<u8>)> =
            vec![Default::default(); sources.len()];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut bufs = vec![vec![0u8; 65536]; 8];
        let mut meta = vec![crate::sys::udp::RecvMeta::default(); 8];
        while seen.iter().map(|s| s.1.len()).sum::<usize>() < 20 * sources.len() {
            assert!(std::time::Instant::now() < deadline, "datagrams missing");
            for lane in 0..group.len() {
                let Ok(n) = group
                    .member(lane)
                    .recv_batch(Family::V4, &mut bufs, &mut meta)
                else {
                    continue;
                };
                for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                    for datagram in meta.datagrams(buf) {
                        let entry = &mut seen[usize::from(datagram[0])];
                        entry.0.insert(lane);
                        entry.1.push(datagram[1]);
                    }
                }
            }
        }
        for (k, (lanes, rounds)) in seen.iter().enumerate() {
            assert_eq!(lanes.len(), 1, "source {k} arrived on lanes {lanes:?}");
            assert!(
                rounds.windows(2).all(|w| w[0] < w[1]),
                "source {k}: {rounds:?}"
            );
        }
        let used: std::collections::BTreeSet<usize> =
            seen.iter().flat_map(|s| s.0.iter().copied()).collect();
        assert!(
            used.len() > 1,
            "8 sources all hashed to one of 4 members: {used:?}"
        );
    }

    #[test]
    fn the_mark_reaches_every_member() {
        // SO_MARK needs CAP_NET_ADMIN: the tests run as root (as CI does).
        let group = SocketGroup::bind(0, 0x51, 2).unwrap();
        assert_eq!(group.fwmark().unwrap(), 0x51);
        for lane in 0..2 {
            assert_eq!(group.member(lane).fwmark().unwrap(), 0x51);
        }
    }
}
