//! Process figures for reports: the peak resident memory of this process, and a child process's
//! exit status and wall time (`tl-bench verify` runs each model in a child of its own).

use std::process::{Command, ExitStatus};
use std::time::Instant;

/// The peak resident set of this process so far, in MiB: `VmHWM` of `/proc/self/status` (Linux;
/// `None` elsewhere). Not `getrusage`'s `ru_maxrss`, which after `exec` still counts the memory
/// of the process that spawned this one.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// A `kB` figure of `/proc/self/status` (`VmHWM:`, `VmRSS:`), in MiB.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// How a child process ended, with its wall time.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Seconds from start to exit.
    pub seconds: f64,
}

/// Runs `command` to completion and times it.
pub fn run_timed(command: &mut Command) -> std::io::Result<Finished> {
    let start = Instant::now();
    let status = command.status()?;
    Ok(Finished {
        status,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read() {
        let done = run_timed(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert!(done.seconds >= 0.0);
        // Other tests of this binary allocate and free meanwhile, so the peak before may
        // already exceed what the process holds now: the peak is checked against the resident
        // set with 64 MiB more in it (the peak is never below it) and for never falling.
        let before = peak_rss_mib().unwrap();
        let big = vec![1u8; 64 << 20];
        let resident = status_mib("VmRSS:").unwrap();
        let after = peak_rss_mib().unwrap();
        assert!(
            resident >= 64.0,
            "{resident} MiB resident with 64 MiB touched"
        );
        assert!(
            after >= resident - 1.0 && after >= before,
            "{before} -> {after} MiB"
        );
        drop(big);
    }
}
