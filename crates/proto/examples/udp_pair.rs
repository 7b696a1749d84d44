//! Two WireGuard engines talking over real UDP sockets on loopback, without a
//! TUN device: A sends an IP packet to B, which answers; the handshake happens
//! on the way. Shows the whole caller's loop: `send`, `receive`,
//! `poll_transmit` and `poll_timeout`/`handle_timeout`.
//!
//! `cargo run -p ferroguard-proto --example udp_pair`

use std::net::UdpSocket;
use std::time::Duration;

use ferroguard_proto::crypto::SecretKey;
use ferroguard_proto::device::{Device, Now, ReceiveOutcome, SendOutcome};

/// A minimal IPv4 packet from `src` to `dst` carrying `text`.
fn ipv4(src: [u8; 4], dst: [u8; 4], text: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + text.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(text);
    p
}

struct Node {
    device: Device,
    socket: UdpSocket,
}

impl Node {
    fn new(seed: u8) -> std::io::Result<Node> {
        let mut device = Device::new([seed; 32]); // use OS randomness in real code
        device.set_private_key(Some(SecretKey::from_bytes([seed; 32])));
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Node { device, socket })
    }

    /// Sends everything the engine queued.
    fn flush(&mut self) -> std::io::Result<()> {
        while let Some(t) = self.device.poll_transmit() {
            self.socket.send_to(&t.data, t.endpoint.addr)?;
        }
        Ok(())
    }

    /// Receives one datagram (if any arrives soon) and returns a delivered
    /// IP packet, if it carried one.
    fn pump(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 2048];
        let delivered = match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => match self
                .device
                .receive(Now::system(), from.into(), &mut buf[..n])
            {
                ReceiveOutcome::Deliver { len, .. } => Some(buf[16..16 + len].to_vec()),
                _ => None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
            Err(e) => return Err(e),
        };
        if self
            .device
            .poll_timeout()
            .is_some_and(|t| t <= Now::system().mono)
        {
            self.device.handle_timeout(Now::system());
        }
        self.flush()?;
        Ok(delivered)
    }
}

fn main() -> std::io::Result<()> {
    let (mut a, mut b) = (Node::new(1)?, Node::new(2)?);
    let (pa, pb) = (
        a.device.public_key().unwrap(),
        b.device.public_key().unwrap(),
    );
    let peer_b = a.device.add_peer(pb).unwrap();
    a.device.set_endpoint(peer_b, b.socket.local_addr()?);
    a.device
        .add_allowed_ip(peer_b, "10.0.0.2".parse().unwrap(), 32)
        .unwrap();
    let peer_a = b.device.add_peer(pa).unwrap();
    b.device
        .add_allowed_ip(peer_a, "10.0.0.1".parse().unwrap(), 32)
        .unwrap();

    let mut out = [0u8; 2048];
    let ping = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello through the tunnel");
    assert!(matches!(
        a.device.send(Now::system(), &ping, &mut out),
        SendOutcome::Queued(_)
    ));
    a.flush()?; // the handshake initiation
    let mut received = None;
    for _ in 0..20 {
        received = received.or(b.pump()?);
        a.pump()?;
        if received.is_some() {
            break;
        }
    }
    let packet = received.expect("B received A's packet");
    println!(
        "B got {} bytes: {:?}",
        packet.len(),
        String::from_utf8_lossy(&packet[20..])
    );
    // B learned A's endpoint from the handshake and answers at once.
    let pong = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"hello back");
    if let SendOutcome::Sent { len, endpoint, .. } = b.device.send(Now::system(), &pong, &mut out) {
        b.socket.send_to(&out[..len], endpoint.addr)?;
    }
    let answer = a.pump()?.expect("A received B's answer");
    println!("A got {:?}", String::from_utf8_lossy(&answer[20..]));
    Ok(())
}
