//! The machine: CPU time of other processes, memory from /proc and wait4, and a
//! description of the machine and the commit.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tch::Device;

use crate::cli::device_name;

/// Busy CPU time of the whole machine and of this process (with its waited-for children), to
/// tell how much other processes ran during a measurement.
pub(crate) struct CpuSnap {
    pub(crate) at: Instant,
    pub(crate) machine_s: f64,
    pub(crate) own_s: f64,
}

impl CpuSnap {
    /// Clock ticks per second of /proc (USER_HZ, 100 on Linux).
    const HZ: f64 = 100.0;

    pub(crate) fn now() -> Self {
        let ticks = |text: &str, skip: usize, take: usize| -> f64 {
            text.split_whitespace()
                .skip(skip)
                .take(take)
                .filter_map(|v| v.parse::<f64>().ok())
                .sum::<f64>()
        };
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu = stat.lines().next().unwrap_or("");
        // cpu user nice system idle iowait irq softirq steal: busy = user..system + irq..softirq.
        let fields: Vec<&str> = cpu.split_whitespace().collect();
        let busy: f64 = [1usize, 2, 3, 6, 7]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        // /proc/self/stat: after the command name, fields 14-17 are utime stime cutime cstime.
        let own_stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after_comm = own_stat.rsplit(')').next().unwrap_or("");
        let own = ticks(after_comm, 11, 4);
        CpuSnap {
            at: Instant::now(),
            machine_s: busy / Self::HZ,
            own_s: own / Self::HZ,
        }
    }

    /// Average number of cores other processes kept busy since `before`.
    pub(crate) fn others_since(&self, before: &CpuSnap) -> f64 {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let others = (self.machine_s - before.machine_s) - (self.own_s - before.own_s);
        (others / wall).max(0.0)
    }
}

// ---- memory -------------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status` (or `/proc/self/status`), in MiB.
pub(crate) fn status_mb(pid: Option<u32>, field: &str) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// What a child process used, from the kernel's account when it was reaped.
pub(crate) struct ChildUsage {
    /// Its exit code (`None` when a signal ended it).
    pub(crate) exit_code: Option<i32>,
    /// Its own peak RSS, in MB (`ru_maxrss`; Linux starts it at the spawning process's resident
    /// set, which exec replaces, so a child's peak below its parent's reads as the parent's:
    /// a few hundred MB for `tl-perf`, below any suite's).
    pub(crate) peak_rss_mb: f64,
    /// Its user + system CPU seconds.
    pub(crate) cpu_s: f64,
}

/// `wait4(pid, WNOHANG)`: the child's usage once it has exited (and reaps it), `None` while it
/// runs. Unlike `getrusage(RUSAGE_CHILDREN)`, which keeps the largest peak of every child
/// waited for, these figures are this child's alone.
pub(crate) fn try_wait_with_usage(pid: u32) -> std::io::Result<Option<ChildUsage>> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid, writable values of the types wait4 fills.
    let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    match rc {
        0 => Ok(None),
        rc if rc < 0 => Err(std::io::Error::last_os_error()),
        _ => {
            let secs = |t: &libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            Ok(Some(ChildUsage {
                exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                peak_rss_mb: usage.ru_maxrss as f64 / 1024.0,
                cpu_s: secs(&usage.ru_utime) + secs(&usage.ru_stime),
            }))
        }
    }
}

/// Samples this process's anonymous and total RSS every millisecond until stopped.
pub(crate) struct RssSampler {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<(f64, f64)>,
}

impl RssSampler {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut anon, mut rss) = (0.0f64, 0.0f64);
            loop {
                anon = anon.max(status_mb(None, "RssAnon:").unwrap_or(0.0));
                rss = rss.max(status_mb(None, "VmRSS:").unwrap_or(0.0));
                if flag.load(Ordering::Relaxed) {
                    return (anon, rss);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        RssSampler { stop, thread }
    }

    /// (peak anonymous RSS, peak RSS) seen, MB.
    pub(crate) fn finish(self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((f64::NAN, f64::NAN))
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Where the run happens; `repo` is a directory inside the repository (for the commit).
pub(crate) fn machine(device: Device, threads: i32, repo: &Path) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1048576.0);
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    let gpu = match device {
        Device::Cuda(_) => Command::new("nvidia-smi")
            .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        _ => None,
    };
    json!({
        "nproc": nproc,
        "mem_gib": mem_gib,
        "cpu": cpu,
        "gpu": gpu,
        "device": device_name(device),
        "torch_threads": if device == Device::Cpu { tch::get_num_threads() } else { threads },
        "date_utc": utc_now(),
        "commit": git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        "worktree_modified": dirty,
        "libtorch": "2.13.0 (tch 0.26.0)",
        "profile": "dev (opt-level 2 for dependencies, 1 for the workspace)",
    })
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_reaped_with_its_own_exit_code_and_usage() {
        // Reaped by `try_wait_with_usage` (wait4), which clippy does not know.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh starts");
        let usage = loop {
            if let Some(usage) = try_wait_with_usage(child.id()).expect("wait4 succeeds") {
                break usage;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(usage.exit_code, Some(3));
        // The kernel counts the spawning process's resident set at the spawn as the child's
        // (exec keeps the high-water mark of the memory it replaces): a shell's figure is this
        // process's, not more.
        let ours = status_mb(None, "VmHWM:").expect("/proc/self/status has VmHWM");
        assert!(
            usage.peak_rss_mb > 0.0 && usage.peak_rss_mb <= ours + 64.0,
            "child {} MB, this process {ours} MB",
            usage.peak_rss_mb
        );
        assert!(usage.cpu_s >= 0.0);
        // Reaped: a second wait finds no such child.
        assert!(try_wait_with_usage(child.id()).is_err());
    }
}
