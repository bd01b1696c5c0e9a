//! Graceful shutdown: a future that resolves on SIGTERM or SIGINT, after
//! which servers stop accepting and let in-flight requests finish, and a
//! watchdog that ends the process if they take longer than `ShutdownTimeout`.

use std::time::Duration;

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
        std::process::exit(1);
    });
}
