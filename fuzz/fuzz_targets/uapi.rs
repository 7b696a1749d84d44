//! Feeds arbitrary bytes to the UAPI set parser and to a whole connection
//! served against a dummy handler. Besides "no panic", it checks that every
//! answer is framed (`...\n\n`) and carries a non-positive errno.
#![no_main]

use std::io::{self, Cursor, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ferroguard::uapi::{
    parse_set, serve_connection, DeviceSnapshot, Errno, PeerSnapshot, SetRequest, UapiHandler,
};
use libfuzzer_sys::fuzz_target;

/// A connection whose client sends `input` and then closes.
struct Connection<'a> {
    input: Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl Read for Connection<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.input.read(buffer)
    }
}

impl Write for Connection<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.output.write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Accepts requests with an even number of peers, refuses the others, and
/// reports one peer.
struct DummyHandler;

impl UapiHandler for DummyHandler {
    fn get(&mut self) -> DeviceSnapshot {
        DeviceSnapshot {
            private_key: Some([7; 32].into()),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerSnapshot {
                public_key: [9; 32],
                preshared_key: [0; 32].into(),
                endpoint: Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 1))),
                last_handshake: Some(Duration::new(1, 2)),
                tx_bytes: 3,
                rx_bytes: 4,
                persistent_keepalive: 5,
                allowed_ips: vec![(IpAddr::from([10, 0, 0, 0]), 8)],
            }],
        }
    }

    fn set(&mut self, request: SetRequest) -> Result<(), Errno> {
        if request.peers.len() % 2 == 0 {
            Ok(())
        } else {
            Err(Errno::INVALID)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if parse_set(Cursor::new(data)).is_ok() {
        // A request is complete only once its blank line was read.
        assert!(data.first() == Some(&b'\n') || data.windows(2).any(|pair| pair == b"\n\n"));
    }

    let mut connection = Connection {
        input: Cursor::new(data),
        output: Vec::new(),
    };
    let _ = serve_connection(&mut connection, &mut DummyHandler);
    let output = connection.output;
    assert!(output.is_empty() || output.ends_with(b"\n\n"));
    for line in output.split(|&byte| byte == b'\n') {
        if let Some(code) = line.strip_prefix(b"errno=") {
            assert!(
                code == b"0" || code.first() == Some(&b'-'),
                "errno {code:?}"
            );
        }
    }
});
