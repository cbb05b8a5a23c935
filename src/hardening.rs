//! Process hardening at start-up: keep the delegated passwords the relay holds
//! in memory (the vault, sspi's NTLM contexts, rustls buffers) out of core
//! files, out of reach of same-user debuggers, and out of swap.
//!
//! [`harden_process`] runs once, first thing in `serve`:
//!
//! 1. `PR_SET_DUMPABLE 0`: the kernel writes no core dump for this process and
//!    refuses `ptrace` attach (and `/proc/PID/mem`) to non-root users, even the
//!    relay's own user. Root with `CAP_SYS_PTRACE` can still attach: that is the
//!    README's stated limit ("root on the bastion during a live session").
//! 2. `RLIMIT_CORE 0` (soft and hard): belt and braces for the same, and it
//!    survives a later `PR_SET_DUMPABLE 1` (which `setuid`/`execve` can cause).
//! 3. `mlockall(MCL_CURRENT | MCL_FUTURE)`: no page of the process is ever
//!    written to swap. Only when it cannot backfire: with `MCL_FUTURE` every
//!    later `mmap`/`brk` counts against `RLIMIT_MEMLOCK`, so under a finite
//!    limit (8 MiB by default for non-root) the relay would start fine and then
//!    fail allocations under load. It therefore locks only when the limit is
//!    unlimited or the process has `CAP_IPC_LOCK`, and otherwise logs how to
//!    grant it (systemd `LimitMEMLOCK=infinity`, docker `--ulimit memlock=-1`).
//!
//! Nothing here is fatal: a relay that cannot lock memory still serves, and
//! says so. On platforms other than Linux every step is a no-op.
//!
//! Freed heap memory is zeroed by the binary's global allocator (`src/main.rs`),
//! not here: it must be installed before the first allocation.

use std::fmt;

/// What [`harden_process`] achieved. `warnings` says what failed and how to fix it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardeningReport {
    /// `PR_GET_DUMPABLE` afterwards: `Some(false)` = no core dumps, no ptrace by
    /// non-root users. `None` where it could not be read (or not Linux).
    pub dumpable: Option<bool>,
    /// `RLIMIT_CORE` (soft, hard) afterwards, in bytes; `u64::MAX` = unlimited.
    pub core_limit: Option<(u64, u64)>,
    /// All current and future pages locked in RAM (`mlockall` succeeded).
    pub memory_locked: bool,
    /// `RLIMIT_MEMLOCK` soft limit seen when deciding whether to lock; `u64::MAX` = unlimited.
    pub memlock_limit: Option<u64>,
    /// One line per step that did not achieve its goal, with the fix.
    pub warnings: Vec<String>,
}

impl HardeningReport {
    /// Log the outcome: one `info` line with structured fields, one `warn` per problem.
    pub fn log(&self) {
        tracing::info!(
            dumpable = %OptDisplay(self.dumpable),
            core_limit = %OptDisplay(self.core_limit.map(|(soft, _)| Limit(soft))),
            memory_locked = self.memory_locked,
            memlock_limit = %OptDisplay(self.memlock_limit.map(Limit)),
            "process hardened"
        );
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }
}

/// `unknown` for `None`, the value otherwise (tracing fields cannot be `Option`).
struct OptDisplay<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OptDisplay<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// An rlimit value: `u64::MAX` (`RLIM_INFINITY`) prints as `unlimited`.
struct Limit(u64);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u64::MAX {
            f.write_str("unlimited")
        } else {
            self.0.fmt(f)
        }
    }
}

const MEMLOCK_FIX: &str = "raise it: systemd LimitMEMLOCK=infinity (config/winrm-relay.service), \
     docker run --ulimit memlock=-1, or grant CAP_IPC_LOCK";

/// Whether to `mlockall(MCL_CURRENT | MCL_FUTURE)` given the `RLIMIT_MEMLOCK`
/// soft limit and whether `CAP_IPC_LOCK` is effective. `Err` says why not.
fn memory_lock_plan(memlock_soft: u64, cap_ipc_lock: bool) -> Result<(), String> {
    if cap_ipc_lock || memlock_soft == u64::MAX {
        return Ok(());
    }
    Err(format!(
        "memory NOT locked: RLIMIT_MEMLOCK is {} bytes and CAP_IPC_LOCK is absent; locking all memory \
         under a finite limit would make allocations fail once it is reached, so delegated passwords \
         may be written to swap; {MEMLOCK_FIX}",
        Limit(memlock_soft)
    ))
}

/// Is bit `cap` set in the `CapEff:` line of a `/proc/<pid>/status` text?
fn cap_effective(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << cap) != 0)
}

#[cfg(target_os = "linux")]
mod imp {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    use nix::sys::prctl;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    use super::{cap_effective, memory_lock_plan, HardeningReport, MEMLOCK_FIX};

    /// `CAP_IPC_LOCK` (linux/capability.h): mlock beyond RLIMIT_MEMLOCK.
    const CAP_IPC_LOCK: u32 = 14;

    pub fn harden_process() -> HardeningReport {
        let mut report = HardeningReport::default();

        if let Err(e) = prctl::set_dumpable(false) {
            report.warnings.push(format!(
                "PR_SET_DUMPABLE 0 failed ({e}): core dumps and ptrace by the relay's user stay possible"
            ));
        }
        report.dumpable = prctl::get_dumpable().ok();

        if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
            report.warnings.push(format!(
                "setting RLIMIT_CORE to 0 failed ({e}); set LimitCORE=0 in the unit"
            ));
        }
        report.core_limit = getrlimit(Resource::RLIMIT_CORE).ok();

        lock_memory(&mut report);
        report
    }

    fn lock_memory(report: &mut HardeningReport) {
        let (mut soft, hard) = match getrlimit(Resource::RLIMIT_MEMLOCK) {
            Ok(limits) => limits,
            Err(e) => {
                report
                    .warnings
                    .push(format!("memory NOT locked: cannot read RLIMIT_MEMLOCK ({e})"));
                return;
            }
        };
        // Raising the soft limit up to the hard one needs no privilege.
        if soft < hard && setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).is_ok() {
            soft = hard;
        }
        report.memlock_limit = Some(soft);
        let cap_ipc_lock = std::fs::read_to_string("/proc/self/status")
            .map(|status| cap_effective(&status, CAP_IPC_LOCK))
            .unwrap_or(false);
        if let Err(why) = memory_lock_plan(soft, cap_ipc_lock) {
            report.warnings.push(why);
            return;
        }
        match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
            Ok(()) => report.memory_locked = true,
            Err(e) => report.warnings.push(format!(
                "memory NOT locked: mlockall failed ({e}); delegated passwords may be written to swap; {MEMLOCK_FIX} \
                 (and allow mlockall in any seccomp filter)"
            )),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::HardeningReport;

    pub fn harden_process() -> HardeningReport {
        HardeningReport {
            warnings: vec!["process hardening (no dumps, no swap) is implemented for Linux only".to_string()],
            ..HardeningReport::default()
        }
    }
}

/// Harden this process (see the module docs). Never fails: what could not be
/// done is in the report's `warnings`. Call once, early; `mlockall` applies to
/// the whole process, every thread.
pub fn harden_process() -> HardeningReport {
    imp::harden_process()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_lock_only_when_it_cannot_backfire() {
        assert!(memory_lock_plan(u64::MAX, false).is_ok());
        assert!(memory_lock_plan(8 << 20, true).is_ok());
        let why = memory_lock_plan(8 << 20, false).unwrap_err();
        assert!(
            why.contains("8388608") && why.contains("LimitMEMLOCK=infinity"),
            "{why}"
        );
        assert!(why.contains("--ulimit memlock=-1"), "{why}");
    }

    #[test]
    fn capability_bits_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t0\n";
        assert!(cap_effective(status, 14));
        assert!(!cap_effective(status, 24));
        assert!(!cap_effective("CapEff:\t0000000000000000\n", 14));
        assert!(!cap_effective("no such line", 14));
    }

    #[test]
    fn limits_print_unlimited() {
        assert_eq!(Limit(u64::MAX).to_string(), "unlimited");
        assert_eq!(Limit(0).to_string(), "0");
        assert_eq!(OptDisplay::<bool>(None).to_string(), "unknown");
    }

    /// Runs in the shared test process: dumpable and RLIMIT_CORE are harmless
    /// to change there; mlockall may or may not be allowed (root, limits), so
    /// only its consistency with the report is checked.
    #[cfg(target_os = "linux")]
    #[test]
    fn harden_process_disables_dumps() {
        use nix::sys::prctl;
        use nix::sys::resource::{getrlimit, Resource};

        let report = harden_process();
        assert!(!prctl::get_dumpable().unwrap());
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
        assert_eq!(report.dumpable, Some(false), "{report:?}");
        assert_eq!(report.core_limit, Some((0, 0)), "{report:?}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_lck_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        if report.memory_locked {
            assert!(vm_lck_kb > 0, "mlockall reported success but VmLck is 0");
            assert!(report.warnings.is_empty(), "{report:?}");
        } else {
            assert!(
                report.warnings.iter().any(|w| w.contains("memory NOT locked")),
                "{report:?}"
            );
        }
        // Idempotent: a second call changes nothing and reports the same.
        let again = harden_process();
        assert_eq!(
            (again.dumpable, again.core_limit, again.memory_locked),
            (report.dumpable, report.core_limit, report.memory_locked)
        );
    }
}
