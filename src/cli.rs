//! The command line, following wireguard-go's conventions:
//! `ferroguard [-f|--foreground] INTERFACE-NAME`.

use std::fmt;

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
}

/// A command-line error, printed with the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The usage text.
pub const USAGE: &str = "\
Usage: ferroguard [OPTIONS] INTERFACE-NAME

Creates the TUN interface INTERFACE-NAME and runs a WireGuard device on it,
configured through /var/run/wireguard/INTERFACE-NAME.sock with wg(8).

Options:
  -f, --foreground       stay in the foreground (also: WG_PROCESS_FOREGROUND=1)
      --verbosity LEVEL  silent, error, info (default), debug or trace
                         (also: LOG_LEVEL; wireguard-go's 'verbose' = debug)
      --selftest         run the start-up self-tests and exit
      --skip-selftest    do not run the self-tests at start-up
                         (also: FERROGUARD_SKIP_SELFTEST=1)
      --version          print the version and the compiled-in features
  -h, --help             print this help

Without --foreground, ferroguard sets up the interface and the socket, then
detaches; it exits 0 once set-up succeeded and 1 with a message if not.
It exits cleanly on SIGINT or SIGTERM, when the interface is deleted and when
the socket file is removed, removing the socket and the interface.

Environment:
  WG_PROCESS_FOREGROUND=1   same as --foreground
  LOG_LEVEL=LEVEL           same as --verbosity
  FERROGUARD_SOCKET_DIR=DIR socket directory (default /var/run/wireguard)
  FERROGUARD_CRYPTO_THREADS=N threads that encrypt and decrypt large batches
                            (1 = the I/O threads alone; default: one per
                            core from 3 cores on, else 1)

Use with wg-quick: WG_QUICK_USERSPACE_IMPLEMENTATION=ferroguard wg-quick up wg0
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
    }))
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
}
