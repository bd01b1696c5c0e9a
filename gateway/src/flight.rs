//! What a miss's flight has while it runs, for the requests waiting on it
//! (see the miss path in [`crate::service`]).
//!
//! The flight's task records the fetcher's [`Event`]s into a
//! [`watch`] channel of [`Live`]: the `.info` and `.mod` as soon as the
//! fetcher has them, and the zip's bytes in a spool file (never in memory)
//! as they arrive. A `.zip` request waiting on the flight reads the growing
//! spool from its start ([`zip_reader`]), woken by the channel as bytes
//! land; the last [`HOLD_BACK`] bytes are released only once the fetcher
//! says the zip passed its checks ([`Event::Verified`], sent before the
//! save) or the verdict is "stored", and a refusal ends the body with an
//! error, so no client ever receives a whole zip that was not verified. The
//! save (which hashes the zip again and syncs it to disk) is not on the
//! client's path.

use bytes::Bytes;
use futures::StreamExt;
use modmesh_fetcher::Event;
use modmesh_proto::{Error, Result, Version};
use modmesh_storage::{ByteStream, ZipReader};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The zip's tail held back from waiting clients until the zip is verified:
/// it holds the zip's central directory, so no client can use a zip that a
/// later check refuses.
pub const HOLD_BACK: u64 = 64 * 1024;

/// The largest piece sent to a client at once.
const PIECE: u64 = 256 * 1024;

/// What a running flight has so far.
#[derive(Debug, Default)]
pub struct Live {
    /// The resolved version's `.info` and `.mod`, as they will be stored.
    pub meta: Option<(Version, Bytes, Bytes)>,
    /// The zip transfer in progress.
    pub zip: Option<ZipLive>,
    /// The flight's end: `Ok` when the version is stored.
    pub verdict: Option<Result<()>>,
}

/// A zip transfer being spooled.
#[derive(Debug, Clone)]
pub struct ZipLive {
    spool: Arc<tempfile::NamedTempFile>,
    /// The upstream's announced size.
    pub size: Option<u64>,
    /// Bytes in the spool so far.
    pub written: u64,
    /// Which transfer of the flight (a restart voids the earlier one).
    id: u64,
    /// The spool could not be written: readers stop.
    failed: bool,
    /// The fetcher verified this transfer's zip: all of it may be read.
    pub verified: bool,
}

/// Records a flight's events into its [`Live`].
pub struct Recorder {
    tx: Arc<watch::Sender<Live>>,
    file: Option<tokio::fs::File>,
    next_id: u64,
}

impl Recorder {
    /// A recorder publishing to `tx`.
    pub fn new(tx: Arc<watch::Sender<Live>>) -> Self {
        Recorder {
            tx,
            file: None,
            next_id: 0,
        }
    }

    /// Records `e`.
    pub async fn apply(&mut self, e: Event) {
        match e {
            Event::Metadata {
                version,
                info,
                go_mod,
            } => self.tx.send_modify(|l| {
                if l.meta.is_none() {
                    l.meta = Some((version, info, go_mod));
                }
            }),
            Event::ZipStart { size } => {
                self.next_id += 1;
                let id = self.next_id;
                self.file = None;
                let spool = tokio::task::spawn_blocking(|| {
                    let spool = tempfile::NamedTempFile::new()?;
                    let writer = spool.reopen()?;
                    Ok::<_, std::io::Error>((spool, writer))
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                match spool {
                    Ok((spool, writer)) => {
                        self.file = Some(tokio::fs::File::from_std(writer));
                        self.tx.send_modify(|l| {
                            l.zip = Some(ZipLive {
                                spool: Arc::new(spool),
                                size,
                                written: 0,
                                id,
                                failed: false,
                                verified: false,
                            })
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no spool file for a streaming zip; waiters wait for the save");
                        self.tx.send_modify(|l| l.zip = None);
                    }
                }
            }
            Event::Verified => self.tx.send_modify(|l| {
                if let Some(z) = &mut l.zip {
                    z.verified = true;
                }
            }),
            Event::ZipData(b) => {
                let Some(file) = &mut self.file else { return };
                let wrote = async {
                    file.write_all(&b).await?;
                    file.flush().await
                }
                .await;
                match wrote {
                    Ok(()) => self.tx.send_modify(|l| {
                        if let Some(z) = &mut l.zip {
                            z.written += b.len() as u64;
                        }
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "writing the zip spool failed");
                        self.file = None;
                        self.tx.send_modify(|l| {
                            if let Some(z) = &mut l.zip {
                                z.failed = true;
                            }
                        });
                    }
                }
            }
        }
    }
}

/// A reader of the zip the flight is spooling, when its size is announced,
/// more than [`HOLD_BACK`] bytes have arrived and the flight has not ended
/// yet; `None`: wait (for more, or for the flight, then read storage).
pub fn zip_reader(rx: &watch::Receiver<Live>) -> Option<ZipReader> {
    let (z, id, size) = {
        let l = rx.borrow();
        if l.verdict.is_some() {
            return None;
        }
        // Streaming starts with the first byte past the held-back tail; a
        // zip refused before that gets the refusal as its status. A zip no
        // larger than the tail is read from storage once stored (and so
        // fills the gateway's tier).
        let z = l
            .zip
            .as_ref()
            .filter(|z| !z.failed && z.written > HOLD_BACK)?;
        (z.spool.clone(), z.id, z.size?)
    };
    let file = std::fs::File::open(z.path()).ok()?;
    let state = Reader {
        file: tokio::fs::File::from_std(file),
        rx: rx.clone(),
        _spool: z,
        id,
        size,
        pos: 0,
        done: false,
    };
    let stream: ByteStream = futures::stream::unfold(state, |mut r| async move {
        if r.done {
            return None;
        }
        match r.next().await {
            Ok(Some(b)) => Some((Ok(b), r)),
            Ok(None) => None,
            Err(e) => {
                r.done = true;
                Some((Err(e), r))
            }
        }
    })
    .boxed();
    Some(ZipReader { size, stream })
}

struct Reader {
    file: tokio::fs::File,
    rx: watch::Receiver<Live>,
    _spool: Arc<tempfile::NamedTempFile>,
    id: u64,
    size: u64,
    pos: u64,
    done: bool,
}

impl Reader {
    /// How far the client may read, or the end, or why it must stop.
    fn limit(&mut self) -> Result<(u64, bool)> {
        let l = self.rx.borrow_and_update();
        let z = match &l.zip {
            Some(z) if z.id == self.id && !z.failed => z,
            _ => {
                return Err(Error::unavailable(
                    "the upstream transfer of this zip broke off; ask again",
                ))
            }
        };
        // Once verified, the zip is the client's whatever the save does.
        let verified = z.verified || matches!(l.verdict, Some(Ok(())));
        match &l.verdict {
            _ if verified && z.written == self.size => Ok((self.size, true)),
            Some(Err(e)) => Err(e.clone()),
            _ if verified => Err(Error::unavailable(format!(
                "the upstream sent {} zip bytes, not the {} it announced",
                z.written, self.size
            ))),
            _ => Ok((z.written.saturating_sub(HOLD_BACK).min(self.size), false)),
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            let (limit, end) = self.limit()?;
            if self.pos < limit {
                let want = (limit - self.pos).min(PIECE) as usize;
                let mut buf = vec![0u8; want];
                self.file
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| Error::internal(format!("reading the zip spool: {}", e.kind())))?;
                self.pos += want as u64;
                return Ok(Some(Bytes::from(buf)));
            }
            if end {
                return Ok(None);
            }
            if self.rx.changed().await.is_err() {
                // The flight's task is gone: its verdict, if it left one,
                // is in the last value.
                let (limit, end) = self.limit()?;
                if !end && self.pos >= limit {
                    return Err(Error::internal("the fetch ended without a verdict"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads what `s` gives within 200 ms, and whether it ended.
    async fn read(s: &mut ByteStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(200), s.next()).await {
                Ok(Some(Ok(b))) => out.extend_from_slice(&b),
                Ok(None) => return (out, true),
                Ok(Some(Err(_))) | Err(_) => return (out, false),
            }
        }
    }

    async fn ready(s: &mut ByteStream) -> Vec<u8> {
        read(s).await.0
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[tokio::test]
    async fn the_tail_waits_for_the_verdict_and_a_refusal_cuts_the_body() {
        for stored in [true, false] {
            let (tx, rx) = watch::channel(Live::default());
            let tx = Arc::new(tx);
            let mut rec = Recorder::new(tx.clone());
            let zip = data(300 * 1024, stored as u8);
            rec.apply(Event::ZipStart {
                size: Some(zip.len() as u64),
            })
            .await;
            rec.apply(Event::ZipData(Bytes::copy_from_slice(
                &zip[..HOLD_BACK as usize],
            )))
            .await;
            assert!(
                zip_reader(&rx).is_none(),
                "nothing past the held-back tail yet"
            );
            rec.apply(Event::ZipData(Bytes::copy_from_slice(
                &zip[HOLD_BACK as usize..200 * 1024],
            )))
            .await;
            let mut r = zip_reader(&rx).expect("a reader once bytes pass the tail");
            assert_eq!(r.size, zip.len() as u64);
            let first = ready(&mut r.stream).await;
            assert_eq!(first[..], zip[..200 * 1024 - HOLD_BACK as usize]);
            rec.apply(Event::ZipData(Bytes::copy_from_slice(&zip[200 * 1024..])))
                .await;
            let more = ready(&mut r.stream).await;
            assert_eq!(
                first.len() + more.len(),
                zip.len() - HOLD_BACK as usize,
                "all but the tail before the verdict"
            );
            if stored {
                tx.send_modify(|l| l.verdict = Some(Ok(())));
                let (rest, ended) = read(&mut r.stream).await;
                let all = [first, more, rest].concat();
                assert_eq!(all, zip, "the whole zip once stored");
                assert!(ended, "then the body ends");
            } else {
                tx.send_modify(|l| l.verdict = Some(Err(Error::permission("refused"))));
                let end = r.stream.next().await.expect("an item");
                assert!(end.is_err(), "a refusal ends the body in an error");
            }
            assert!(zip_reader(&rx).is_none(), "after the verdict: storage");
        }
    }

    /// The fetcher's word that the zip passed its checks releases the tail
    /// before the save ends, and a save that then fails cuts nothing; a zip
    /// no larger than the held-back tail waits for the save (and is read
    /// from storage).
    #[tokio::test]
    async fn verification_releases_the_tail_before_the_save() {
        for (len, seed) in [(300 * 1024, 7u8), (10 * 1024, 9)] {
            let (tx, rx) = watch::channel(Live::default());
            let tx = Arc::new(tx);
            let mut rec = Recorder::new(tx.clone());
            let zip = data(len, seed);
            rec.apply(Event::ZipStart {
                size: Some(zip.len() as u64),
            })
            .await;
            rec.apply(Event::ZipData(Bytes::copy_from_slice(&zip)))
                .await;
            let held = zip.len().saturating_sub(HOLD_BACK as usize);
            let mut early = zip_reader(&rx);
            match &mut early {
                Some(r) => {
                    let (got, ended) = read(&mut r.stream).await;
                    assert_eq!(got[..], zip[..held], "all but the tail");
                    assert!(!ended, "the tail waits for the verification");
                }
                None => assert_eq!(held, 0, "a small zip waits whole"),
            }
            rec.apply(Event::Verified).await;
            if held == 0 {
                assert!(zip_reader(&rx).is_none(), "a small zip waits for the save");
                continue;
            }
            let mut r = zip_reader(&rx).expect("a reader once verified");
            let (all, ended) = read(&mut r.stream).await;
            assert_eq!(all, zip, "the whole zip once verified, before any verdict");
            assert!(ended);
            if let Some(mut r) = early {
                // The save fails after the verification: the reader that
                // was waiting gets the tail all the same.
                tx.send_modify(|l| l.verdict = Some(Err(Error::unavailable("save failed"))));
                let (rest, ended) = read(&mut r.stream).await;
                assert_eq!(rest[..], zip[held..], "the tail");
                assert!(ended);
            }
        }
    }
}
