//! The start-up self-test switch: a cargo feature (`selftest`, on by
//! default) decides whether the self-tests are compiled in; the run-time
//! flags `--skip-selftest` / `--selftest` skip them or run them alone.

use crate::cli::SelftestMode;

/// Runs every compiled-in self-test and describes the result.
pub fn run_all() -> Result<String, String> {
    #[cfg(feature = "selftest")]
    {
        ferroguard_proto::selftest::run()
            .map(|report| report.to_string())
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "selftest"))]
    {
        Err("this build has no self-tests (built without the 'selftest' feature)".into())
    }
}

/// The start-up step: runs the self-tests unless skipped or not compiled in.
pub fn at_startup(mode: SelftestMode) -> Result<(), String> {
    match mode {
        SelftestMode::Skip => Ok(()),
        SelftestMode::Default | SelftestMode::Only => {
            #[cfg(feature = "selftest")]
            {
                let report = run_all()?;
                log::debug!("{report}");
            }
            Ok(())
        }
    }
}
