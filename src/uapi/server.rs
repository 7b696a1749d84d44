//! The request loop of one connection.

use std::io::{self, BufReader, Read, Write};

use super::parse::{read_get_body, read_set_body, LineKind, LineReader, ReadError};
use super::{Errno, UapiHandler};

/// Large enough for a typical `wg setconf` in one read.
const READ_BUFFER: usize = 64 * 1024;

/// Serves requests on one connection until the client closes it.
///
/// Each request is `get=1` or `set=1` followed by its body (see
/// [`super::parse_set`]); every request gets an answer ending in
/// `errno=N\n\n`, where `N` is 0 or a negative errno. A `set` is handed to
/// the handler only when it parsed completely. A `get=1` not followed by a
/// blank line is answered `errno=-22` (after reading up to the next blank
/// line).
///
/// Returns `Ok(())` when the client closes the connection between requests.
/// Returns an error, after answering when an answer makes sense, when the
/// connection cannot go on: an unknown op line (closed without an answer,
/// like wireguard-go: [`io::ErrorKind::InvalidData`]), a request cut short by
/// EOF ([`io::ErrorKind::UnexpectedEof`], answered `-EIO`), a request larger
/// than [`super::MAX_REQUEST_LEN`] (answered `-EIO`), or an I/O error.
///
/// Reads block: a caller that must not wait forever on a silent client sets
/// a read timeout on the stream (the timeout then ends the connection).
pub fn serve_connection<S: Read + Write>(
    stream: S,
    handler: &mut impl UapiHandler,
) -> io::Result<()> {
    let mut lines = LineReader::new(BufReader::with_capacity(READ_BUFFER, stream));
    serve_lines(&mut lines, handler)
}

/// The request loop over an already wrapped stream (tests use it with a
/// small request limit).
pub(super) fn serve_lines<S: Read + Write>(
    lines: &mut LineReader<BufReader<S>>,
    handler: &mut impl UapiHandler,
) -> io::Result<()> {
    loop {
        lines.start_request();
        match lines.next_line() {
            Ok(LineKind::Complete) => {}
            Ok(LineKind::TooLong) => return Err(unknown_operation()),
            Err(ReadError::Eof { mid_line: false }) => return Ok(()),
            Err(error) => return Err(error.into_io_error()),
        }
        match lines.line() {
            b"set=1" => serve_set(lines, handler)?,
            b"get=1" => serve_get(lines, handler)?,
            _ => return Err(unknown_operation()),
        }
    }
}

fn serve_set<S: Read + Write>(
    lines: &mut LineReader<BufReader<S>>,
    handler: &mut impl UapiHandler,
) -> io::Result<()> {
    let body = read_set_body(lines);
    let outcome = body.result.and_then(|request| handler.set(request));
    answer_status(lines, outcome, body.out_of_step)
}

fn serve_get<S: Read + Write>(
    lines: &mut LineReader<BufReader<S>>,
    handler: &mut impl UapiHandler,
) -> io::Result<()> {
    let body = read_get_body(lines);
    match body.result {
        Ok(()) => handler.answer_get(lines.get_mut().get_mut()),
        Err(errno) => answer_status(lines, Err(errno), body.out_of_step),
    }
}

/// Writes `errno=0` or `errno=-N`. When the connection is out of step the
/// answer is best effort (the client may be gone) and the reason is
/// returned so that the connection ends.
fn answer_status<S: Read + Write>(
    lines: &mut LineReader<BufReader<S>>,
    outcome: Result<(), Errno>,
    out_of_step: Option<io::Error>,
) -> io::Result<()> {
    let code = match outcome {
        Ok(()) => 0,
        Err(errno) => errno.wire_value(),
    };
    let stream = lines.get_mut().get_mut();
    let written = write!(stream, "errno={code}\n\n").and_then(|()| stream.flush());
    match out_of_step {
        Some(reason) => Err(reason),
        None => written,
    }
}

fn unknown_operation() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "unknown UAPI operation")
}

#[cfg(test)]
mod tests {
    use super::super::parse::MAX_LINE_LEN;
    use super::super::{DeviceOp, DeviceSnapshot, PeerOp, SetRequest, EINVAL, EIO};
    use super::*;
    use std::io::Cursor;
    use zeroize::Zeroizing;

    /// An in-memory connection: reads come from `input`, writes go to
    /// `output`.
    struct MemoryStream {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl MemoryStream {
        fn new(input: &[u8]) -> Self {
            MemoryStream {
                input: Cursor::new(input.to_vec()),
                output: Vec::new(),
            }
        }
    }

    impl Read for MemoryStream {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.input.read(buffer)
        }
    }

    impl Write for MemoryStream {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.output.write(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Records the requests it gets and answers `get` with a fixed state.
    #[derive(Default)]
    struct RecordingHandler {
        sets: Vec<SetRequest>,
        gets: usize,
        fail_with: Option<Errno>,
    }

    impl UapiHandler for RecordingHandler {
        fn get(&mut self) -> DeviceSnapshot {
            self.gets += 1;
            DeviceSnapshot {
                listen_port: 51820,
                ..DeviceSnapshot::default()
            }
        }

        fn set(&mut self, request: SetRequest) -> Result<(), Errno> {
            self.sets.push(request);
            self.fail_with.map_or(Ok(()), Err)
        }
    }

    fn serve(input: &[u8], handler: &mut RecordingHandler) -> (io::Result<()>, String) {
        let mut stream = MemoryStream::new(input);
        let result = serve_connection(&mut stream, handler);
        (result, String::from_utf8(stream.output).unwrap())
    }

    fn listen_port_request(port: u16) -> SetRequest {
        SetRequest {
            device: vec![DeviceOp::ListenPort(port)],
            peers: vec![],
        }
    }

    #[test]
    fn two_requests_on_one_connection() {
        let mut handler = RecordingHandler::default();
        let (result, output) = serve(b"set=1\nlisten_port=1\n\nget=1\n\n", &mut handler);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(output, "errno=0\n\nlisten_port=51820\nerrno=0\n\n");
        assert_eq!(handler.sets, vec![listen_port_request(1)]);
        assert_eq!(handler.gets, 1);
    }

    #[test]
    fn an_error_then_a_valid_request() {
        let mut handler = RecordingHandler::default();
        let input = b"set=1\nlisten_port=70000\nfwmark=1\n\nset=1\nlisten_port=2\n\n";
        let (result, output) = serve(input, &mut handler);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(output, "errno=-22\n\nerrno=0\n\n");
        assert_eq!(handler.sets, vec![listen_port_request(2)]);
    }

    #[test]
    fn handler_errors_are_sent_negative() {
        let mut handler = RecordingHandler {
            fail_with: Some(Errno(98)),
            ..RecordingHandler::default()
        };
        let (result, output) = serve(b"set=1\nlisten_port=1\n\n", &mut handler);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(output, "errno=-98\n\n");
    }

    #[test]
    fn get_with_trailing_data_is_invalid_and_stays_in_step() {
        let mut handler = RecordingHandler::default();
        let (result, output) = serve(b"get=1\nx=y\nz\n\nget=1\n\n", &mut handler);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            output,
            format!("errno={EINVAL}\n\nlisten_port=51820\nerrno=0\n\n")
        );
        assert_eq!(handler.gets, 1);
    }

    #[test]
    fn unknown_operation_closes_without_answer() {
        let mut handler = RecordingHandler::default();
        for input in [
            &b"put=1\n\n"[..],
            b"set=2\n\n",
            b"GET=1\n\n",
            b"\n",
            b"get=1",
        ] {
            let (result, output) = serve(input, &mut handler);
            let error = result.expect_err("the connection must end with an error");
            assert_ne!(error.kind(), io::ErrorKind::Other);
            assert_eq!(output, "", "input {input:?}");
        }
        assert_eq!(handler.gets + handler.sets.len(), 0);
    }

    #[test]
    fn eof_inside_a_set_answers_eio_and_applies_nothing() {
        let mut handler = RecordingHandler::default();
        let (result, output) = serve(b"set=1\nlisten_port=1\n", &mut handler);
        let error = result.expect_err("a truncated request ends the connection");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(output, format!("errno={EIO}\n\n"));
        assert!(handler.sets.is_empty());
    }

    #[test]
    fn clean_eof_and_empty_connection_are_fine() {
        let mut handler = RecordingHandler::default();
        assert!(serve(b"", &mut handler).0.is_ok());
        let (result, output) = serve(b"get=1\n\n", &mut handler);
        assert!(result.is_ok());
        assert!(output.ends_with("errno=0\n\n"));
    }

    #[test]
    fn oversized_request_is_refused_and_ends_the_connection() {
        let mut handler = RecordingHandler::default();
        let mut input = b"set=1\n".to_vec();
        for _ in 0..100 {
            input.extend_from_slice(b"replace_peers=true\n");
        }
        input.extend_from_slice(b"\nget=1\n\n");
        let mut stream = MemoryStream::new(&input);
        let mut lines = LineReader::with_request_limit(BufReader::new(&mut stream), 1000);
        let result = serve_lines(&mut lines, &mut handler);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            String::from_utf8_lossy(&stream.output),
            format!("errno={EIO}\n\n")
        );
        assert!(handler.sets.is_empty());
        assert_eq!(handler.gets, 0);
    }

    #[test]
    fn huge_line_is_invalid_but_the_connection_goes_on() {
        let mut handler = RecordingHandler::default();
        let mut input = b"set=1\nlisten_port=".to_vec();
        input.extend(std::iter::repeat_n(b'1', MAX_LINE_LEN * 3));
        input.extend_from_slice(b"\n\nset=1\nreplace_peers=true\n\n");
        let (result, output) = serve(&input, &mut handler);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(output, "errno=-22\n\nerrno=0\n\n");
        let replace = SetRequest {
            device: vec![DeviceOp::ReplacePeers],
            peers: vec![],
        };
        assert_eq!(handler.sets, vec![replace]);
    }

    #[test]
    fn secrets_reach_the_handler_intact() {
        let mut handler = RecordingHandler::default();
        let input = format!(
            "set=1\nprivate_key={}\npublic_key={}\npreshared_key={}\n\n",
            "0f".repeat(32),
            "a0".repeat(32),
            "77".repeat(32)
        );
        let (result, output) = serve(input.as_bytes(), &mut handler);
        assert!(result.is_ok());
        assert_eq!(output, "errno=0\n\n");
        let request = &handler.sets[0];
        assert_eq!(
            request.device,
            vec![DeviceOp::PrivateKey(Zeroizing::new([0x0f; 32]))]
        );
        assert_eq!(request.peers[0].public_key, [0xa0; 32]);
        assert_eq!(
            request.peers[0].ops,
            vec![PeerOp::PresharedKey(Zeroizing::new([0x77; 32]))]
        );
    }
}
