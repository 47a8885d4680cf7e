//! Process signals: the launcher's own SIGINT/SIGTERM/SIGHUP handler, and signals sent to the
//! children's process groups. All of the crate's `unsafe` is here.
//!
//! Invariants: the handler only stores into an atomic (async-signal-safe); handlers are
//! installed while at least one [`StopSignals`] guard lives and the previous dispositions are
//! restored when the last one is dropped.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The last stop signal received while a guard was alive, 0 if none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Signal dispositions replaced by ours: restored when the last guard goes.
type Previous = Vec<(libc::c_int, libc::sigaction)>;

/// Guards alive, and the dispositions to restore when the last one goes.
static INSTALLED: Mutex<Option<(usize, Previous)>> = Mutex::new(None);

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_stop_signal(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// While alive, SIGINT, SIGTERM and SIGHUP do not kill the process but are recorded for
/// [`StopSignals::received`].
pub(crate) struct StopSignals(());

impl StopSignals {
    /// Installs the handlers (once for all live guards).
    pub(crate) fn install() -> std::io::Result<StopSignals> {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        match installed.as_mut() {
            Some((count, _)) => *count += 1,
            None => {
                RECEIVED.store(0, Ordering::SeqCst);
                let mut previous = Vec::new();
                for signal in STOP_SIGNALS {
                    // SAFETY: `sigaction` is a plain C struct for which all-zero is a valid
                    // value; we then set an async-signal-safe handler and an empty mask.
                    let old = unsafe {
                        let mut action: libc::sigaction = std::mem::zeroed();
                        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
                        action.sa_flags = libc::SA_RESTART;
                        libc::sigemptyset(&mut action.sa_mask);
                        let mut old: libc::sigaction = std::mem::zeroed();
                        if libc::sigaction(signal, &action, &mut old) != 0 {
                            let error = std::io::Error::last_os_error();
                            restore(&previous);
                            return Err(error);
                        }
                        old
                    };
                    previous.push((signal, old));
                }
                *installed = Some((1, previous));
            }
        }
        Ok(StopSignals(()))
    }

    /// The stop signal received since the handlers were installed, if any.
    pub(crate) fn received(&self) -> Option<libc::c_int> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((count, previous)) = installed.as_mut() {
            *count -= 1;
            if *count == 0 {
                restore(previous);
                *installed = None;
            }
        }
    }
}

fn restore(previous: &[(libc::c_int, libc::sigaction)]) {
    for (signal, old) in previous {
        // SAFETY: `old` was filled in by a successful `sigaction` call for this signal.
        unsafe {
            libc::sigaction(*signal, old, std::ptr::null_mut());
        }
    }
}

/// Sends `signal` to every process of the process group `pgid`; a group that no longer exists
/// is not an error.
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return; // never signal "every process" or init
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Makes the child that `command` spawns get SIGKILL if the launcher dies first (even by
/// SIGKILL), so that no host outlives its launcher. Linux only; elsewhere a no-op.
///
/// The kernel ties this to the thread that spawns the child, so spawn from a thread that lives
/// until the child is reaped ([`crate::launch()`] spawns and waits on the calling thread).
pub(crate) fn die_with_launcher(command: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY of getpid: no preconditions.
        let launcher = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and only calls prctl and
        // getppid, which are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher may have died before prctl took effect.
                if libc::getppid() != launcher {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}
