//! The command line, following wireguard-go's conventions:
//! `ferroguard [-f|--foreground] INTERFACE-NAME`.

use std::fmt;
use std::net::SocketAddr;

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Nothing at all.
    Silent,
    /// Errors only.
    Error,
    /// Errors and notable events (the default).
    Info,
    /// Per-peer events: handshakes, roaming, timers.
    Debug,
    /// Per-packet events.
    Trace,
}

impl Verbosity {
    /// Parses a level name; wireguard-go's `verbose` means debug.
    pub fn parse(s: &str) -> Option<Verbosity> {
        Some(match s.to_ascii_lowercase().as_str() {
            "silent" | "off" => Verbosity::Silent,
            "error" => Verbosity::Error,
            "info" => Verbosity::Info,
            "debug" | "verbose" => Verbosity::Debug,
            "trace" => Verbosity::Trace,
            _ => return None,
        })
    }

    /// The matching `log` filter.
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            Verbosity::Silent => log::LevelFilter::Off,
            Verbosity::Error => log::LevelFilter::Error,
            Verbosity::Info => log::LevelFilter::Info,
            Verbosity::Debug => log::LevelFilter::Debug,
            Verbosity::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Whether to run the start-up self-tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelftestMode {
    /// Run them if compiled in (the default).
    Default,
    /// Skip them.
    Skip,
    /// Run them and exit with their result.
    Only,
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon for an interface.
    Run(Options),
    /// Print the version and exit.
    Version,
    /// Print the usage and exit.
    Help,
    /// Run the self-tests and exit.
    Selftest,
}

/// Options of a daemon run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The TUN interface to create.
    pub interface: String,
    /// Stay in the foreground instead of detaching.
    pub foreground: bool,
    /// Log level.
    pub verbosity: Verbosity,
    /// Self-tests at start-up.
    pub selftest: SelftestMode,
    /// Where to serve Prometheus metrics (off when `None`).
    pub metrics_listen: Option<SocketAddr>,
    /// The account to switch to after set-up (`--user`), if any.
    pub user: Option<UserSpec>,
}

/// `--user NAME[:GROUP]`: names (or numeric ids) as given; they are looked
/// up by the daemon before it creates anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The user.
    pub user: String,
    /// The group; `None` means the user's primary group.
    pub group: Option<String>,
}

impl UserSpec {
    /// Parses `NAME` or `NAME:GROUP`; neither part may be empty.
    pub fn parse(spec: &str) -> Result<UserSpec, UsageError> {
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        let invalid = |part: &str| part.is_empty() || part.contains(['\0', ':']);
        if invalid(user) || group.is_some_and(invalid) {
            return Err(UsageError(format!(
                "--user: expected NAME or NAME:GROUP, got '{spec}'"
            )));
        }
        Ok(UserSpec {
            user: user.to_string(),
            group: group.map(str::to_string),
        })
    }
}

/// A command-line error, printed with the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The usage text (every option here is also in the man page,
/// `doc/ferroguard.8`; a test checks it).
pub const USAGE: &str = "\
Usage: ferroguard [OPTIONS] INTERFACE-NAME
       ferroguard --selftest | --version | --help
       ferroguard --rootless [OPTIONS] CONFIG_FILE
         (no root, no TUN; options -v, --verbose, --socket-dir DIR; docs/ROOTLESS.md)

Creates the TUN interface INTERFACE-NAME and runs a WireGuard device on it,
configured through /var/run/wireguard/INTERFACE-NAME.sock with wg(8).

Options:
  -f, --foreground       stay in the foreground (also: WG_PROCESS_FOREGROUND=1)
      --verbosity LEVEL  silent, error, info (default), debug or trace
                         (also: LOG_LEVEL; wireguard-go's 'verbose' = debug)
      --metrics-listen ADDR:PORT
                         serve Prometheus metrics at http://ADDR:PORT/metrics
                         (off by default; e.g. 127.0.0.1:9586 or [::1]:9586;
                         also: FERROGUARD_METRICS_LISTEN)
      --selftest         run the start-up self-tests and exit
      --skip-selftest    do not run the self-tests at start-up
                         (also: FERROGUARD_SKIP_SELFTEST=1)
      --user NAME[:GROUP]
                         after set-up, switch to user NAME and group GROUP
                         (default: NAME's primary group), see below
                         (also: FERROGUARD_USER)
  -V, --version          print the version and the compiled-in features
  -h, --help             print this help

Without --foreground, ferroguard sets up the interface and the socket, then
detaches and logs to syslog; it exits 0 once set-up succeeded and 1 with a
message if not (2 for a command-line error).
It exits cleanly on SIGINT or SIGTERM, when the interface is deleted and when
the socket file is removed, removing the socket and the interface.

Dropping privileges (--user; off by default: wireguard-go has no such option):
  Once the interface, the UDP sockets and the configuration socket exist,
  ferroguard forks. The child switches to NAME:GROUP (GROUP is its only
  supplementary group), keeps only CAP_NET_ADMIN (wg set fwmark, socket
  buffers) and CAP_NET_BIND_SERVICE (listen ports below 1024), sets
  no_new_privs and runs the tunnel. The parent stays root with only
  CAP_KILL and no open file, passes SIGINT and SIGTERM on to the child, and
  once the child has exited removes the socket file (NAME cannot unlink in
  root's socket directory) and exits with the child's status. The socket
  stays root's, mode 0600. Unknown users are refused before anything is
  created. An interface moved into another network namespace keeps its
  last known MTU (reading it there needs CAP_SYS_ADMIN). Needs root; under
  a restricted capability bounding set (systemd's CapabilityBoundingSet=)
  also CAP_SETUID, CAP_SETGID, CAP_SETPCAP and CAP_KILL. Prefer a user of
  its own to 'nobody': processes of the same user may signal the daemon.

Environment:
  WG_PROCESS_FOREGROUND=1        same as --foreground
  LOG_LEVEL=LEVEL                same as --verbosity
  FERROGUARD_METRICS_LISTEN=ADDR same as --metrics-listen
  FERROGUARD_USER=NAME[:GROUP]   same as --user
  FERROGUARD_SKIP_SELFTEST=1     same as --skip-selftest
  FERROGUARD_SOCKET_DIR=DIR      socket directory (default /var/run/wireguard)
  FERROGUARD_NO_OFFLOAD=1        open the TUN device without kernel offloads
  FERROGUARD_CRYPTO_THREADS=N    threads that encrypt and decrypt large batches
                                 (1 = the I/O threads alone; default: one per
                                 core from 3 cores on, else 1)
  FERROGUARD_IO_THREADS=MODE     'one' thread for the TUN and both sockets, or
                                 'per-source' (one each); default: one below
                                 3 cores, else per-source
  WG_TUN_FD=N                    use open TUN descriptor N (IFF_TUN|IFF_NO_PI,
                                 IFF_VNET_HDR optional) instead of creating one
  WG_UAPI_FD=N                   serve configuration on listening socket N
  LISTEN_PID, LISTEN_FDS         systemd socket activation: descriptor 3 is
                                 the configuration socket

Signals: SIGINT, SIGTERM stop; SIGUSR1 means 'the network changed': sticky
sources are forgotten and every peer with a session gets a keepalive and a
fresh handshake.

Use with wg-quick: WG_QUICK_USERSPACE_IMPLEMENTATION=ferroguard wg-quick up wg0
Manual: man ferroguard (doc/ferroguard.8 in the source tree)
";

/// Parses the arguments (without the program name) and the environment.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, UsageError> {
    let mut foreground = env("WG_PROCESS_FOREGROUND").as_deref() == Some("1");
    let mut verbosity = match env("LOG_LEVEL") {
        Some(level) => Verbosity::parse(&level)
            .ok_or_else(|| UsageError(format!("LOG_LEVEL: unknown level '{level}'")))?,
        None => Verbosity::Info,
    };
    let mut selftest = if env("FERROGUARD_SKIP_SELFTEST").as_deref() == Some("1") {
        SelftestMode::Skip
    } else {
        SelftestMode::Default
    };
    let mut user = env("FERROGUARD_USER")
        .filter(|spec| !spec.is_empty())
        .map(|spec| UserSpec::parse(&spec))
        .transpose()?;
    let mut metrics_listen = match env("FERROGUARD_METRICS_LISTEN") {
        Some(addr) if !addr.is_empty() => Some(parse_listen(&addr, "FERROGUARD_METRICS_LISTEN")?),
        _ => None,
    };
    let mut interface = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-f" | "--foreground" => foreground = true,
            "-h" | "--help" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--selftest" => selftest = SelftestMode::Only,
            "--skip-selftest" => selftest = SelftestMode::Skip,
            "--verbosity" => {
                let level = args
                    .next()
                    .ok_or_else(|| UsageError("--verbosity needs a level".into()))?;
                verbosity = Verbosity::parse(&level)
                    .ok_or_else(|| UsageError(format!("unknown verbosity '{level}'")))?;
            }
            "--user" => {
                let spec = args
                    .next()
                    .ok_or_else(|| UsageError("--user needs NAME[:GROUP]".into()))?;
                user = Some(UserSpec::parse(&spec)?);
            }
            "--metrics-listen" => {
                let addr = args
                    .next()
                    .ok_or_else(|| UsageError("--metrics-listen needs ADDR:PORT".into()))?;
                metrics_listen = Some(parse_listen(&addr, "--metrics-listen")?);
            }
            other if other.starts_with('-') && other.len() > 1 => {
                return Err(UsageError(format!("unknown option '{other}'")));
            }
            name => {
                if interface.replace(name.to_string()).is_some() {
                    return Err(UsageError("only one interface name may be given".into()));
                }
            }
        }
    }
    if selftest == SelftestMode::Only {
        return Ok(Command::Selftest);
    }
    let interface = interface.ok_or_else(|| UsageError("missing interface name".into()))?;
    Ok(Command::Run(Options {
        interface,
        foreground,
        verbosity,
        selftest,
        user,
        metrics_listen,
    }))
}

/// `ADDR:PORT` with a literal address (`[::1]:9586` for IPv6): no name
/// lookups at start-up.
fn parse_listen(text: &str, source: &str) -> Result<SocketAddr, UsageError> {
    text.parse().map_err(|_| {
        UsageError(format!(
            "{source}: '{text}' is not ADDR:PORT (e.g. 127.0.0.1:9586 or [::1]:9586)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(|s| s.to_string()), |k| {
            env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn wireguard_go_conventions() {
        let Ok(Command::Run(o)) = run(&["-f", "wg0"], &[]) else {
            panic!()
        };
        assert_eq!(o.interface, "wg0");
        assert!(o.foreground);
        let Ok(Command::Run(o)) = run(&["wg1"], &[("WG_PROCESS_FOREGROUND", "1")]) else {
            panic!()
        };
        assert!(o.foreground);
        let Ok(Command::Run(o)) = run(&["wg1"], &[("LOG_LEVEL", "verbose")]) else {
            panic!()
        };
        assert_eq!(o.verbosity, Verbosity::Debug);
        assert!(!matches!(
            run(&["wg1"], &[]),
            Ok(Command::Run(Options {
                foreground: true,
                ..
            }))
        ));
    }

    #[test]
    fn flags_and_errors() {
        assert_eq!(run(&["--version"], &[]), Ok(Command::Version));
        assert_eq!(run(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(run(&["--selftest"], &[]), Ok(Command::Selftest));
        assert!(run(&[], &[]).is_err());
        assert!(run(&["a", "b"], &[]).is_err());
        assert!(run(&["--bogus", "wg0"], &[]).is_err());
        assert!(run(&["--verbosity"], &[]).is_err());
        assert!(run(&["wg0"], &[("LOG_LEVEL", "loud")]).is_err());
        let Ok(Command::Run(o)) = run(&["--skip-selftest", "--verbosity", "trace", "wg0"], &[])
        else {
            panic!()
        };
        assert_eq!(
            (o.selftest, o.verbosity),
            (SelftestMode::Skip, Verbosity::Trace)
        );
    }

    fn user_of(result: Result<Command, UsageError>) -> Option<UserSpec> {
        match result {
            Ok(Command::Run(options)) => options.user,
            other => panic!("not a run: {other:?}"),
        }
    }

    fn spec(user: &str, group: Option<&str>) -> Option<UserSpec> {
        Some(UserSpec {
            user: user.into(),
            group: group.map(Into::into),
        })
    }

    #[test]
    fn user_is_off_by_default_and_taken_from_option_or_environment() {
        assert_eq!(user_of(run(&["wg0"], &[])), None);
        assert_eq!(
            user_of(run(&["--user", "nobody", "wg0"], &[])),
            spec("nobody", None)
        );
        assert_eq!(
            user_of(run(&["wg0", "--user", "fg:nogroup"], &[])),
            spec("fg", Some("nogroup"))
        );
        assert_eq!(
            user_of(run(&["wg0"], &[("FERROGUARD_USER", "65534:65534")])),
            spec("65534", Some("65534"))
        );
        assert_eq!(user_of(run(&["wg0"], &[("FERROGUARD_USER", "")])), None);
        // The command line wins over the environment.
        assert_eq!(
            user_of(run(&["--user", "b", "wg0"], &[("FERROGUARD_USER", "a")])),
            spec("b", None)
        );
    }

    #[test]
    fn malformed_user_specs_are_usage_errors() {
        for bad in ["", ":", ":grp", "usr:", "a:b:c", "a\0b", "a:b\0"] {
            assert!(UserSpec::parse(bad).is_err(), "{bad:?} accepted");
            assert!(
                run(&["--user", bad, "wg0"], &[]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(run(&["wg0", "--user"], &[]).is_err());
        assert!(run(&["wg0"], &[("FERROGUARD_USER", "a:")]).is_err());
        let error = UserSpec::parse("a:").unwrap_err();
        assert_eq!(error.0, "--user: expected NAME or NAME:GROUP, got 'a:'");
    }

    #[test]
    fn metrics_listen_is_off_unless_asked() {
        let Ok(Command::Run(o)) = run(&["wg0"], &[]) else {
            panic!()
        };
        assert_eq!(o.metrics_listen, None);
        let Ok(Command::Run(o)) = run(&["--metrics-listen", "[::1]:9586", "wg0"], &[]) else {
            panic!()
        };
        assert_eq!(o.metrics_listen, Some("[::1]:9586".parse().unwrap()));
        let env = [("FERROGUARD_METRICS_LISTEN", "127.0.0.1:9586")];
        let Ok(Command::Run(o)) = run(&["wg0"], &env) else {
            panic!()
        };
        assert_eq!(o.metrics_listen, Some("127.0.0.1:9586".parse().unwrap()));
        let Ok(Command::Run(o)) = run(&["--metrics-listen", "10.0.0.1:1", "wg0"], &env) else {
            panic!()
        };
        assert_eq!(
            o.metrics_listen,
            Some("10.0.0.1:1".parse().unwrap()),
            "flag wins"
        );
        assert!(run(&["--metrics-listen"], &[]).is_err());
        assert!(run(&["--metrics-listen", "localhost:9586", "wg0"], &[]).is_err());
        assert!(run(&["--metrics-listen", "127.0.0.1", "wg0"], &[]).is_err());
        assert!(run(&["wg0"], &[("FERROGUARD_METRICS_LISTEN", "nope")]).is_err());
    }

    /// Every option the help text names is documented in the man page.
    #[test]
    fn every_option_in_the_help_is_in_the_man_page() {
        let man = include_str!("../doc/ferroguard.8");
        let options: Vec<&str> = USAGE
            .split(|c: char| c.is_whitespace() || c == ',' || c == '|' || c == '(' || c == ')')
            .filter(|w| w.starts_with('-') && w.len() > 1)
            .map(|w| w.trim_end_matches(['.', ':', ';']))
            .collect();
        assert!(options.len() >= 9, "{options:?}");
        for option in options {
            // troff writes a hyphen in an option as \-.
            let troff = option.replace('-', "\\-");
            assert!(man.contains(&troff), "{option} is not in doc/ferroguard.8");
        }
        for var in USAGE.split_whitespace().filter_map(|w| w.split('=').next()) {
            if var.len() > 3 && var.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                assert!(man.contains(var), "{var} is not in doc/ferroguard.8");
            }
        }
    }
}
