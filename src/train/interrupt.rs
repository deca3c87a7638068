//! Ctrl-C during training: the first SIGINT asks the run to stop before its next step, so it ends
//! with a message that says which epoch the run folder holds and how to continue, and with the
//! progress bar closed; a second SIGINT ends the process at once, as without a handler. The ranks
//! of a run of several agree on the step first ([`super::ranks::Rank::stop_due`]), so none is
//! left waiting in a collective (docs/ARCHITECTURE.md, "Stopping").

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first SIGINT after [`listen`].
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// From now on the first SIGINT sets the request that [`requested`] reads, and restores the
/// default action, so that a second one ends the process.
#[cfg(unix)]
pub fn listen() {
    extern "C" fn on_interrupt(_signal: libc::c_int) {
        // an atomic store is async-signal-safe
        REQUESTED.store(true, Ordering::Relaxed);
    }
    // SAFETY: the action is a zeroed `sigaction` (empty mask) with a handler that only stores
    // to an atomic; SA_RESETHAND restores the default action once it has run, and SA_RESTART
    // resumes the system calls the signal interrupted instead of failing them with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// Elsewhere Ctrl-C keeps its default action.
#[cfg(not(unix))]
pub fn listen() {}

/// Whether Ctrl-C asked the run to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}
