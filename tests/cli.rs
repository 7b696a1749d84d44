//! The binary's informational commands: `--version` lists the build's
//! features, `--help` points to the man page, usage errors exit 2.

use std::process::Command;

fn ferroguard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroguard"))
        .args(args)
        .env_remove("FERROGUARD_METRICS_LISTEN")
        .env_remove("LOG_LEVEL")
        .output()
        .expect("run ferroguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_lists_the_compiled_features() {
    let (code, out, _) = ferroguard(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("ferroguard {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let features = out
        .split("features: ")
        .nth(1)
        .expect("a feature list")
        .trim_end()
        .trim_end_matches(')');
    let listed: Vec<&str> = features.split(", ").collect();
    assert_eq!(
        listed.contains(&"selftest"),
        cfg!(feature = "selftest"),
        "{out}"
    );
    assert_eq!(
        listed.contains(&"debug-checks"),
        cfg!(feature = "debug-checks"),
        "{out}"
    );
    let (code, short, _) = ferroguard(&["-V"]);
    assert_eq!((code, short), (0, out));
}

#[test]
fn help_and_usage_errors() {
    let (code, out, _) = ferroguard(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--metrics-listen ADDR:PORT"), "{out}");
    assert!(out.contains("man ferroguard"), "{out}");
    let (code, _, err) = ferroguard(&["--metrics-listen", "nowhere", "wg9"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not ADDR:PORT") && err.contains("Usage:"),
        "{err}"
    );
    let (code, _, err) = ferroguard(&["--no-such-option", "wg9"]);
    assert_eq!(code, 2, "{err}");
}
