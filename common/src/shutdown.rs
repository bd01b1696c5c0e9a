//! Graceful shutdown: a future that resolves on SIGTERM or SIGINT, after
//! which servers stop accepting and let in-flight requests finish, and a
//! watchdog that ends the process if they take longer than `ShutdownTimeout`.

use std::sync::Mutex;
use std::time::Duration;

static FORCED_EXIT_HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Registers `hook` to run if the grace period runs out and the process is
/// ended anyway (e.g. to kill child process groups that would otherwise
/// outlive it). Registering the same function twice runs it once.
pub fn at_forced_exit(hook: fn()) {
    let mut hooks = FORCED_EXIT_HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    if !hooks.iter().any(|h| std::ptr::fn_addr_eq(*h, hook)) {
        hooks.push(hook);
    }
}

/// Resolves when the process receives SIGTERM or SIGINT, and from then on
/// gives in-flight work `grace` before the process exits anyway.
pub async fn signal(grace: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    std::thread::spawn(move || {
        std::thread::sleep(grace);
        eprintln!("shutdown timeout of {grace:?} passed; exiting");
        let hooks = FORCED_EXIT_HOOKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for hook in hooks {
            hook();
        }
        std::process::exit(1);
    });
}
