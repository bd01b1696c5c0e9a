//! Process supervision: one go run as the leader of its own process group,
//! bounded by a timeout, its output read (capped) while it runs, and the
//! whole group killed with `SIGKILL` and the child reaped when the run ends,
//! times out, or its future is dropped.

use modmesh_proto::Error;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// The most stdout kept from one go run (a long `-versions` list fits).
const MAX_STDOUT: usize = 16 << 20;
/// The most stderr kept from one go run.
const MAX_STDERR: usize = 1 << 20;
/// How long reaping a killed go run may take before it is left to a
/// background task.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// What one go run left.
#[derive(Debug)]
pub(crate) struct GoOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How a supervised run ended without output.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The command could not be started or waited for (a local fault).
    Spawn(std::io::Error),
    /// The run took longer than the timeout; its group was killed.
    TimedOut,
    /// Waiting for the child failed.
    Wait(std::io::Error),
}

/// Counts a running go process down when its run ends or is dropped.
struct Running(metrics::Gauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Spawns `cmd` (which must be set up with `process_group(0)` and piped
/// stdout/stderr), reads its output and waits for it within `timeout`.
/// Dropping the returned future kills the group.
///
/// Each run is a span `go` (its arguments and exit status) and counts in
/// `modmesh_go_processes_running`, `modmesh_go_processes_total{outcome}` and
/// `modmesh_go_process_duration_seconds`.
pub(crate) async fn run(
    cmd: Command,
    timeout: Duration,
    label: &str,
    spawned: impl FnOnce(i32),
) -> std::result::Result<GoOutput, RunError> {
    use tracing::Instrument;
    let std_cmd = cmd.as_std();
    let args: Vec<String> = std::iter::once(std_cmd.get_program())
        .chain(std_cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let span = tracing::info_span!(
        "go",
        otel.name = %format!("go {label}"),
        process.command_args = %args.join(" "),
        process.exit_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let gauge = metrics::gauge!("modmesh_go_processes_running");
    gauge.increment(1.0);
    let running = Running(gauge);
    let started = Instant::now();
    let out = supervise(cmd, timeout, label, spawned)
        .instrument(span.clone())
        .await;
    drop(running);
    let outcome = match &out {
        Ok(o) => {
            if let Some(code) = o.status.code() {
                span.record("process.exit_code", code);
            }
            if o.status.success() {
                "ok"
            } else {
                "failed"
            }
        }
        Err(RunError::TimedOut) => "timeout",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
    metrics::counter!("modmesh_go_processes_total", "outcome" => outcome).increment(1);
    metrics::histogram!("modmesh_go_process_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    out
}

async fn supervise(
    mut cmd: Command,
    timeout: Duration,
    label: &str,
    spawned: impl FnOnce(i32),
) -> std::result::Result<GoOutput, RunError> {
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let Some(pid) = child.id() else {
        return Err(RunError::Wait(std::io::Error::other(
            "the go process has no pid",
        )));
    };
    spawned(pid as i32);
    tracing::debug!(pid, run = label, "go started");
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut group = ProcessGroup::new(Pid::from_raw(pid as i32), child);
    let outcome = tokio::time::timeout(timeout, async {
        let wait = async {
            let status = group.child_mut().wait().await;
            // Nothing the run started may outlive it (and keep its pipes
            // open).
            group.signal();
            status
        };
        tokio::join!(
            read_capped(stdout, MAX_STDOUT),
            read_capped(stderr, MAX_STDERR),
            wait
        )
    })
    .await;
    match outcome {
        Ok((stdout, stderr, Ok(status))) => {
            group.reaped();
            tracing::debug!(pid, %status, elapsed = ?started.elapsed(), "go finished");
            Ok(GoOutput {
                status,
                stdout: stdout.map_err(RunError::Wait)?,
                stderr: stderr.unwrap_or_default(),
            })
        }
        Ok((_, _, Err(e))) => Err(RunError::Wait(e)),
        Err(_) => {
            tracing::warn!(
                pid,
                run = label,
                ?timeout,
                "go timed out; killing its process group"
            );
            group.kill_and_reap().await;
            Err(RunError::TimedOut)
        }
    }
}

/// Makes the command's process receive `SIGKILL` when this process dies
/// (even by `SIGKILL`), so a killed fetcher leaves no go run behind; what
/// that go run started itself is killed by the next job-directory sweep.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died before the call: then go no further.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("the fetcher exited"));
            }
            Ok(())
        });
    }
}

impl RunError {
    /// The error for this outcome of `what` run with `go_binary`.
    pub(crate) fn into_error(self, what: &str, timeout: Duration) -> Error {
        match self {
            RunError::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(error = %e, "the go binary (GoBinary) was not found");
                Error::internal("the go binary (GoBinary) was not found")
            }
            RunError::Spawn(e) => {
                tracing::error!(error = %e, "the go binary (GoBinary) cannot be run");
                Error::internal(format!(
                    "the go binary (GoBinary) cannot be run: {}",
                    e.kind()
                ))
            }
            RunError::TimedOut => {
                Error::timeout(format!("{what} timed out after {}s", timeout.as_secs_f64()))
            }
            RunError::Wait(e) => {
                tracing::error!(error = %e, "waiting for go failed");
                Error::internal(format!("waiting for go: {}", e.kind()))
            }
        }
    }
}

/// Reads `r` to its end, keeping at most `cap` bytes (the rest is drained so
/// the writer never blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, cap: usize) -> std::io::Result<Vec<u8>> {
    let Some(mut r) = r else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// A running go command, leader of its own process group. Dropping it while
/// armed kills the whole group with SIGKILL and reaps the child.
struct ProcessGroup {
    pgid: Pid,
    child: Option<Child>,
}

/// Process groups of go runs still alive, so a forced exit of this process
/// (the shutdown timeout running out) can take them along.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// SIGKILL to every go process group still running. Registered with
/// [`modmesh_common::shutdown::at_forced_exit`] by
/// [`GoFetcher::new`](super::GoFetcher::new).
pub fn kill_live_groups() {
    let groups = LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    for &pgid in groups.iter() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

impl ProcessGroup {
    fn new(pgid: Pid, child: Child) -> Self {
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pgid.as_raw());
        ProcessGroup {
            pgid,
            child: Some(child),
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is present while running")
    }

    /// SIGKILL to every process of the group (none left is fine).
    fn signal(&self) {
        match killpg(self.pgid, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = %self.pgid, error = %e, "killing the go process group failed")
            }
        }
    }

    /// The child has been waited for; nothing left to do on drop.
    fn reaped(&mut self) {
        self.child = None;
    }

    /// Kills the group and waits (briefly) for the child to be reaped.
    async fn kill_and_reap(&mut self) {
        self.signal();
        if let Some(child) = self.child.as_mut() {
            if tokio::time::timeout(REAP_GRACE, child.wait()).await.is_ok() {
                self.child = None;
            }
        }
        // If the wait timed out, Drop hands the child to a reaper task.
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&g| g != self.pgid.as_raw());
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.signal();
        tracing::debug!(pgid = %self.pgid, "go run abandoned; process group killed");
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            // Without a runtime, tokio reaps dropped children in the
            // background itself.
            Err(_) => drop(child),
        }
    }
}
