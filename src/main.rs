//! `ferroguard [-f|--foreground] INTERFACE-NAME`: a userspace WireGuard
//! daemon that behaves like `wireguard-go -f INTERFACE-NAME`.

use std::process::ExitCode;

use ferroguard::cli::{self, Command};
use ferroguard::{daemon, logging};

fn main() -> ExitCode {
    // The rootless mode has a command line of its own (src/rootless/).
    if std::env::args().nth(1).as_deref() == Some("--rootless") {
        return ExitCode::from(ferroguard::rootless::main(std::env::args().skip(2)));
    }
    let command = match cli::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("ferroguard: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("{}", ferroguard::version_string());
            ExitCode::SUCCESS
        }
        Command::Selftest => match ferroguard::selftest::run_all() {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferroguard: self-test failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(options) => {
            logging::init(&options.interface, options.verbosity.to_filter());
            if let Err(e) = ferroguard::selftest::at_startup(options.selftest) {
                eprintln!("ferroguard: self-test failed, refusing to start: {e}");
                return ExitCode::FAILURE;
            }
            match daemon::run(&options) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferroguard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
