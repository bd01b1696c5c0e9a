//! What every binary does first: load the configuration (exit 2 on an
//! error that names the key), start logging, and bind its listener (exit 1
//! if it cannot).

use crate::config::{listen_addr, Config};
use tokio::net::TcpListener;

/// Prints `err` as `component: err` to stderr, logs it, and exits with `code`.
pub fn fail(component: &str, code: i32, err: impl std::fmt::Display) -> ! {
    tracing::error!(component, error = %err, "exiting");
    eprintln!("{component}: {err}");
    std::process::exit(code);
}

/// Loads the configuration from this process's arguments and environment
/// and starts logging, traces ([`crate::telemetry`]), metrics
/// ([`crate::metrics`]) and the gRPC hops' TLS and token
/// ([`crate::security`]); a configuration error exits 2. Must run inside a
/// tokio runtime.
pub fn start(component: &str) -> Config {
    let args: Vec<String> = std::env::args().collect();
    let cfg = Config::from_args_and_env(&args).unwrap_or_else(|e| fail(component, 2, e));
    let traces: crate::telemetry::TraceConfig =
        cfg.section().unwrap_or_else(|e| fail(component, 2, e));
    let tracer =
        crate::telemetry::init(&traces, component).unwrap_or_else(|e| fail(component, 2, e));
    crate::logging::init_traced(&cfg.LogLevel, &cfg.LogFormat, tracer);
    crate::metrics::init(&cfg).unwrap_or_else(|e| fail(component, 2, e));
    crate::security::init(&cfg).unwrap_or_else(|e| fail(component, 2, e));
    cfg
}

/// Binds the address in `listen` (or `default` when it is empty); `key`
/// names the configuration key in errors. A bad address exits 2, an
/// address that cannot be bound exits 1.
pub async fn bind(component: &str, key: &str, listen: &str, default: &str) -> TcpListener {
    let listen = if listen.is_empty() { default } else { listen };
    let addr = listen_addr(key, listen).unwrap_or_else(|e| fail(component, 2, e));
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| fail(component, 1, format!("{key}: cannot listen on {addr}: {e}")))
}

/// Exits for a failure to build a service from the configuration: 2 when
/// the configuration is at fault (`Invalid`), 1 otherwise.
pub fn fail_build(component: &str, e: modmesh_proto::Error) -> ! {
    let code = if e.is(modmesh_proto::ErrorKind::Invalid) {
        2
    } else {
        1
    };
    fail(component, code, e)
}

/// Warns of every key of the file under `tables` (see
/// [`Config::unread_keys`]) that nothing in this binary read: it does
/// nothing here, and is most likely a typo or a key this build ignores.
pub fn report_unread(cfg: &Config, tables: &[&str]) {
    for key in cfg.unread_keys(tables) {
        tracing::warn!(key = %key, "config key not used by this build; ignored");
    }
}
