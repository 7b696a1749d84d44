//! `hsflood`: a handshake flood generator for the `flood` namespace scenario
//! (tests/netns/scenarios/flood.sh). Build: `cargo build --release --example hsflood`.
//!
//! ```text
//! hsflood capture --key-file FILE --peer-public HEX --out FILE
//!     Writes (hex) one genuine handshake initiation from the owner of the private key in FILE
//!     (hex) to the peer PEER-PUBLIC, made by the protocol engine itself. Run it before that
//!     peer's first real handshake: the copy is then an old, already superseded initiation,
//!     exactly what an attacker records on the wire.
//! hsflood flood --target IP:PORT --target-public HEX [--replay FILE] [--seconds S] [--rate PPS]
//!               [--sources N] [--source-base IP] [--ports N] [--batch N] [--mix G,M,R]
//!     Sends, as fast as one thread can (sendmmsg batches) or at PPS datagrams per second, a mix
//!     (weights G,M,R; default 1,1,1) of
//!       garbage  handshake-typed datagrams of handshake sizes (148, 92, 64 bytes), random bodies;
//!       mac1     initiations from an unknown peer with a valid mac1 for the target's public key,
//!                which a responder under load must answer with a cookie reply (type 3);
//!       replay   the captured genuine initiation, again and again (needs --replay).
//!     Each kind has its own sockets (--ports per kind, each with its own port) and cycles through
//!     --sources addresses counted up from --source-base (sent with a pktinfo source), so every
//!     answer is attributed to the kind it answers. Prints one line per second and a last line
//!     "summary key=value ...", then waits half a second for late answers.
//! ```
//!
//! It uses only the daemon library's safe socket layer (`sys::udp`, batched
//! `sendmmsg`/`recvmmsg`) and the protocol crate (mac1 through
//! `cookie::CookieGenerator`, the genuine initiation through `device::Device`),
//! so it adds no `unsafe` and no dependency.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use ferroguard::sys::poll_readable;
use ferroguard::sys::udp::{Family, LocalSource, RecvMeta, SendOutcome, Transmit, UdpSockets};
use ferroguard_proto::cookie::CookieGenerator;
use ferroguard_proto::crypto::{PublicKey, SecretKey};
use ferroguard_proto::device::{Device, Now};
use ferroguard_proto::messages::{
    COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TYPE_COOKIE_REPLY, TYPE_INITIATION,
    TYPE_RESPONSE,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Distinct datagrams prepared per generated kind (sent round robin).
const POOL: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("capture") => capture(&args[1..]),
        Some("flood") => Options::parse(&args[1..]).and_then(flood),
        _ => Err(usage().into()),
    };
    if let Err(e) = outcome {
        eprintln!("hsflood: {e}");
        std::process::exit(2);
    }
}

fn usage() -> &'static str {
    "usage: hsflood capture --key-file FILE --peer-public HEX --out FILE\n       \
     hsflood flood --target IP:PORT --target-public HEX [--replay FILE] [--seconds S] [--rate PPS] \
     [--sources N] [--source-base IP] [--ports N] [--batch N] [--mix G,M,R]"
}

// ----- command line ------------------------------------------------------------------------

/// `--name value` pairs, each name at most once.
fn named_values(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut rest = args.iter();
    while let Some(name) = rest.next() {
        let name = name
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument '{name}'\n{}", usage()))?;
        let value = rest
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(format!("--{name} given twice").into());
        }
        pairs.push((name.to_string(), value.clone()));
    }
    Ok(pairs)
}

fn take(pairs: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let at = pairs.iter().position(|(n, _)| n == name)?;
    Some(pairs.remove(at).1)
}

fn required(pairs: &mut Vec<(String, String)>, name: &str) -> Result<String> {
    take(pairs, name).ok_or_else(|| format!("--{name} is required\n{}", usage()).into())
}

fn number<T: std::str::FromStr>(
    pairs: &mut Vec<(String, String)>,
    name: &str,
    default: T,
) -> Result<T> {
    match take(pairs, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("--{name}: '{v}' is not a valid number").into()),
    }
}

fn no_leftovers(pairs: &[(String, String)]) -> Result<()> {
    match pairs.first() {
        Some((name, _)) => Err(format!("unknown option --{name}\n{}", usage()).into()),
        None => Ok(()),
    }
}

fn hex_decode(text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not a hex string".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(Into::into))
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_from_hex(text: &str, what: &str) -> Result<[u8; 32]> {
    hex_decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{what}: expected 64 hex digits").into())
}

// ----- capture -----------------------------------------------------------------------------

/// Makes a genuine initiation with the engine, exactly as the real peer would.
fn capture(args: &[String]) -> Result<()> {
    let mut pairs = named_values(args)?;
    let key_file = required(&mut pairs, "key-file")?;
    let peer_public = key_from_hex(&required(&mut pairs, "peer-public")?, "--peer-public")?;
    let out = required(&mut pairs, "out")?;
    no_leftovers(&pairs)?;
    let private = key_from_hex(&std::fs::read_to_string(&key_file)?, "--key-file")?;

    let initiation = genuine_initiation(private, peer_public)?;
    std::fs::write(&out, hex_encode(&initiation) + "\n")?;
    println!("captured a {}-byte initiation into {out}", initiation.len());
    Ok(())
}

fn genuine_initiation(private: [u8; 32], peer_public: [u8; 32]) -> Result<Vec<u8>> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no system randomness: {e}"))?;
    let mut device = Device::new(seed);
    device.set_private_key(Some(SecretKey::from_bytes(private)));
    let peer = device
        .add_peer(PublicKey(peer_public))
        .ok_or("the peer's public key is our own")?;
    // The engine only starts a handshake for a packet it could send: any
    // endpoint and a route will do, nothing is sent anywhere.
    device.set_endpoint(peer, SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
    device.add_allowed_ip(peer, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)?;
    let mut packet = [0u8; 20];
    packet[0] = 0x45;
    packet[3] = 20;
    packet[16..20].copy_from_slice(&[10, 0, 0, 1]);
    let mut out = vec![0u8; 256];
    device.send(Now::system(), &packet, &mut out);
    while let Some(transmit) = device.poll_transmit() {
        if transmit.data.len() == INITIATION_LEN && transmit.data[0] == TYPE_INITIATION as u8 {
            return Ok(transmit.data);
        }
    }
    Err("the engine produced no initiation (low-order peer key?)".into())
}

// ----- flood -------------------------------------------------------------------------------

/// What to flood with, and how.
struct Options {
    target: SocketAddr,
    target_public: [u8; 32],
    replay: Option<Vec<u8>>,
    seconds: f64,
    /// Datagrams per second in all; 0 = as fast as possible.
    rate: u64,
    sources: u32,
    source_base: Option<IpAddr>,
    ports: usize,
    batch: usize,
    /// Weights of garbage, mac1, replay.
    mix: [u32; 3],
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut pairs = named_values(args)?;
        let target: SocketAddr = required(&mut pairs, "target")?
            .parse()
            .map_err(|_| "--target: expected IP:PORT")?;
        let target_public =
            key_from_hex(&required(&mut pairs, "target-public")?, "--target-public")?;
        let replay = match take(&mut pairs, "replay") {
            Some(path) => Some(hex_decode(&std::fs::read_to_string(&path)?)?),
            None => None,
        };
        let options = Options {
            target,
            target_public,
            replay,
            seconds: number(&mut pairs, "seconds", 5.0)?,
            rate: number(&mut pairs, "rate", 0)?,
            sources: number(&mut pairs, "sources", 1)?,
            source_base: match take(&mut pairs, "source-base") {
                Some(ip) => Some(
                    ip.parse()
                        .map_err(|_| "--source-base: expected an IP address")?,
                ),
                None => None,
            },
            ports: number(&mut pairs, "ports", 1)?,
            batch: number(&mut pairs, "batch", 64)?,
            mix: parse_mix(take(&mut pairs, "mix").as_deref().unwrap_or("1,1,1"))?,
        };
        no_leftovers(&pairs)?;
        options.validate()?;
        Ok(options)
    }

    fn validate(&self) -> Result<()> {
        if !(self.seconds > 0.0 && self.seconds <= 3600.0) {
            return Err("--seconds must be in (0, 3600]".into());
        }
        if self.sources == 0 || self.ports == 0 || self.ports > 256 {
            return Err("--sources must be at least 1, --ports from 1 to 256".into());
        }
        if self.sources > 1 && self.source_base.is_none() {
            return Err("--sources above 1 needs --source-base".into());
        }
        if !(1..=1024).contains(&self.batch) {
            return Err("--batch must be from 1 to 1024".into());
        }
        if self.mix[2] > 0 && self.replay.is_none() {
            return Err("a replay weight needs --replay FILE".into());
        }
        if self
            .replay
            .as_ref()
            .is_some_and(|r| r.len() != INITIATION_LEN)
        {
            return Err(format!("--replay: expected a {INITIATION_LEN}-byte initiation").into());
        }
        if self.mix.iter().all(|&w| w == 0) {
            return Err("--mix: at least one weight must be positive".into());
        }
        Ok(())
    }
}

fn parse_mix(text: &str) -> Result<[u32; 3]> {
    let weights: Vec<u32> = text
        .split(',')
        .map(|w| w.trim().parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| "--mix: expected three integers G,M,R")?;
    weights
        .try_into()
        .map_err(|_| "--mix: expected three integers G,M,R".into())
}

/// The three kinds of datagram, in the order of `--mix`.
#[derive(Clone, Copy)]
enum Kind {
    Garbage = 0,
    Mac1 = 1,
    Replay = 2,
}

const KINDS: [Kind; 3] = [Kind::Garbage, Kind::Mac1, Kind::Replay];
const KIND_NAMES: [&str; 3] = ["garbage", "mac1", "replay"];

/// Answers received, by the kind they answer and their message type.
#[derive(Default, Clone, Copy)]
struct Answers {
    cookie_replies: u64,
    responses: u64,
    other: u64,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    sent: [u64; 3],
    answers: [Answers; 3],
    send_errors: u64,
}

impl Tally {
    fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }
}

/// One kind's sockets and the datagrams it cycles through.
struct Sender {
    kind: Kind,
    sockets: Vec<UdpSockets>,
    pool: Vec<Vec<u8>>,
    next: usize,
}

fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| format!("no system randomness: {e}"))?;
    Ok(bytes)
}

/// Handshake-typed datagrams of the three handshake sizes with random bodies.
fn garbage_pool() -> Result<Vec<Vec<u8>>> {
    let shapes = [
        (TYPE_INITIATION, INITIATION_LEN),
        (TYPE_RESPONSE, RESPONSE_LEN),
        (TYPE_COOKIE_REPLY, COOKIE_REPLY_LEN),
    ];
    (0..POOL)
        .map(|i| {
            let (kind, len) = shapes[i % shapes.len()];
            let mut datagram = random_bytes(len)?;
            datagram[..4].copy_from_slice(&kind.to_le_bytes());
            Ok(datagram)
        })
        .collect()
}

/// Initiations with random bodies from nobody the target knows, each with a
/// valid mac1 for the target's public key (mac2 zero: no cookie).
fn mac1_pool(target_public: &[u8; 32]) -> Result<Vec<Vec<u8>>> {
    let mut macs = CookieGenerator::new(&PublicKey(*target_public));
    (0..POOL)
        .map(|_| {
            let mut datagram = random_bytes(INITIATION_LEN)?;
            datagram[..4].copy_from_slice(&TYPE_INITIATION.to_le_bytes());
            macs.add_macs(Instant::now(), &mut datagram);
            Ok(datagram)
        })
        .collect()
}

fn make_senders(options: &Options) -> Result<Vec<Sender>> {
    let mut senders = Vec::new();
    for kind in KINDS {
        if options.mix[kind as usize] == 0 {
            continue;
        }
        let pool = match kind {
            Kind::Garbage => garbage_pool()?,
            Kind::Mac1 => mac1_pool(&options.target_public)?,
            Kind::Replay => vec![options.replay.clone().unwrap_or_default()],
        };
        let sockets = (0..options.ports)
            .map(|_| {
                let sockets = UdpSockets::bind(0, 0)?;
                // Answers are small: plain buffers, no GRO.
                sockets.disable_gro()?;
                Ok(sockets)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        senders.push(Sender {
            kind,
            sockets,
            pool,
            next: 0,
        });
    }
    Ok(senders)
}

/// The `index`-th source address counted up from `base`.
fn source_address(base: IpAddr, index: u32) -> IpAddr {
    match base {
        IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip).wrapping_add(index))),
        IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from(
            u128::from(ip).wrapping_add(u128::from(index)),
        )),
    }
}

/// The order in which batches go out: each kind as often as its weight.
fn schedule(options: &Options, senders: &[Sender]) -> Vec<usize> {
    let mut order = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        for _ in 0..options.mix[sender.kind as usize] {
            order.push(i);
        }
    }
    order
}

fn flood(options: Options) -> Result<()> {
    let mut senders = make_senders(&options)?;
    let order = schedule(&options, &senders);
    let mut answers = AnswerReader::new(&senders, options.target);
    eprintln!("hsflood: {}", describe(&options));

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(options.seconds);
    let mut tally = Tally::default();
    let mut last_report = (start, Tally::default());
    let mut round = 0usize;
    while Instant::now() < end {
        send_round(&options, &mut senders, &order, round, &mut tally);
        round += 1;
        answers.read(&senders, &mut tally, Duration::ZERO);
        pace(&options, start, tally.total_sent());
        if last_report.0.elapsed() >= Duration::from_secs(1) {
            report_second(start, &last_report, &tally);
            last_report = (Instant::now(), tally);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Late answers (cookie replies still queued in the daemon).
    let linger = Instant::now() + Duration::from_millis(500);
    while Instant::now() < linger {
        answers.read(
            &senders,
            &mut tally,
            linger.saturating_duration_since(Instant::now()),
        );
    }
    print_summary(&tally, elapsed);
    Ok(())
}

fn describe(options: &Options) -> String {
    let speed = match options.rate {
        0 => "full speed".to_string(),
        rate => format!("{rate} datagrams/s"),
    };
    format!(
        "{} s at {speed} to {} from {} source(s) x {} port(s) per kind, batches of {}, \
         mix garbage:mac1:replay {:?}",
        options.seconds, options.target, options.sources, options.ports, options.batch, options.mix
    )
}

/// Sends batch number `round`: the kind the schedule names, from the next
/// source address and socket of that kind.
fn send_round(
    options: &Options,
    senders: &mut [Sender],
    order: &[usize],
    round: usize,
    tally: &mut Tally,
) {
    let sender = &mut senders[order[round % order.len()]];
    let cycle = round / order.len();
    let source = options.source_base.map(|base| LocalSource {
        addr: source_address(base, (cycle % options.sources as usize) as u32),
        ifindex: 0,
    });
    let socket = &sender.sockets[cycle % sender.sockets.len()];
    let batch: Vec<Transmit<'_>> = (0..options.batch)
        .map(|i| {
            let datagram = &sender.pool[(sender.next + i) % sender.pool.len()];
            Transmit::datagram(options.target, datagram).from_source(source)
        })
        .collect();
    sender.next = (sender.next + options.batch) % sender.pool.len();
    for outcome in socket.send(&batch) {
        match outcome {
            SendOutcome::Sent => tally.sent[sender.kind as usize] += 1,
            // A refused source still sends the datagram (from the default
            // source): an error of the flood's set-up all the same.
            SendOutcome::SourceDropped { .. } | SendOutcome::Failed(_) => tally.send_errors += 1,
        }
    }
}

/// Sleeps when ahead of the rate's schedule.
fn pace(options: &Options, start: Instant, sent: u64) {
    if options.rate == 0 {
        return;
    }
    let due = start + Duration::from_secs_f64(sent as f64 / options.rate as f64);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Reads the answers that come back to the flood's sockets.
struct AnswerReader {
    family: Family,
    /// (sender, socket, descriptor of the target's family)
    receivers: Vec<(usize, usize, RawFd)>,
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl AnswerReader {
    fn new(senders: &[Sender], target: SocketAddr) -> AnswerReader {
        let family = match target {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        };
        let mut receivers = Vec::new();
        for (i, sender) in senders.iter().enumerate() {
            for (j, socket) in sender.sockets.iter().enumerate() {
                let fd = match family {
                    Family::V4 => socket.raw_fds().0,
                    Family::V6 => socket.raw_fds().1,
                };
                receivers.extend(fd.map(|fd| (i, j, fd)));
            }
        }
        AnswerReader {
            family,
            receivers,
            bufs: (0..64).map(|_| vec![0u8; 2048]).collect(),
            meta: vec![RecvMeta::default(); 64],
        }
    }

    /// Counts whatever answers are waiting, waiting up to `wait` for the first.
    fn read(&mut self, senders: &[Sender], tally: &mut Tally, wait: Duration) {
        let fds: Vec<RawFd> = self.receivers.iter().map(|&(_, _, fd)| fd).collect();
        let Ok(ready) = poll_readable(&fds, Some(wait)) else {
            return;
        };
        for (slot, &(sender, socket, _)) in self.receivers.iter().enumerate() {
            if !ready.get(slot).copied().unwrap_or(false) {
                continue;
            }
            let answers = &mut tally.answers[senders[sender].kind as usize];
            let socket = &senders[sender].sockets[socket];
            while let Ok(n) = socket.recv_batch(self.family, &mut self.bufs, &mut self.meta) {
                if n == 0 {
                    break;
                }
                for (buf, meta) in self.bufs.iter().zip(&self.meta).take(n) {
                    meta.datagrams(buf).for_each(|d| answers.count(d));
                }
            }
        }
    }
}

impl Answers {
    fn count(&mut self, datagram: &[u8]) {
        match datagram.first().map(|&t| u32::from(t)) {
            Some(TYPE_COOKIE_REPLY) => self.cookie_replies += 1,
            Some(TYPE_RESPONSE) => self.responses += 1,
            _ => self.other += 1,
        }
    }
}

fn report_second(start: Instant, (since, before): &(Instant, Tally), now: &Tally) {
    let secs = since.elapsed().as_secs_f64().max(1e-3);
    let per_second = |a: u64, b: u64| ((a - b) as f64 / secs).round() as u64;
    let sent: Vec<String> = (0..3)
        .map(|k| {
            format!(
                "{}={}",
                KIND_NAMES[k],
                per_second(now.sent[k], before.sent[k])
            )
        })
        .collect();
    let cookies: u64 = now.answers.iter().map(|a| a.cookie_replies).sum::<u64>()
        - before.answers.iter().map(|a| a.cookie_replies).sum::<u64>();
    eprintln!(
        "t={:.0}s sent/s {} ({}) cookie replies/s {}",
        start.elapsed().as_secs_f64(),
        per_second(now.total_sent(), before.total_sent()),
        sent.join(" "),
        (cookies as f64 / secs).round() as u64
    );
}

fn print_summary(tally: &Tally, elapsed: f64) {
    let a = &tally.answers;
    println!(
        "summary sent={} seconds={:.2} rate={:.0} garbage={} mac1={} replay={} \
         mac1_cookies={} mac1_responses={} replay_cookies={} replay_responses={} \
         garbage_answers={} other_answers={} send_errors={}",
        tally.total_sent(),
        elapsed,
        tally.total_sent() as f64 / elapsed.max(1e-3),
        tally.sent[Kind::Garbage as usize],
        tally.sent[Kind::Mac1 as usize],
        tally.sent[Kind::Replay as usize],
        a[Kind::Mac1 as usize].cookie_replies,
        a[Kind::Mac1 as usize].responses,
        a[Kind::Replay as usize].cookie_replies,
        a[Kind::Replay as usize].responses,
        a[Kind::Garbage as usize].cookie_replies
            + a[Kind::Garbage as usize].responses
            + a[Kind::Garbage as usize].other,
        a[Kind::Mac1 as usize].other + a[Kind::Replay as usize].other,
        tally.send_errors
    );
}
