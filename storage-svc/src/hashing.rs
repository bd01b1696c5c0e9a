//! Zip hashes and sizes checked while a save streams: every backend records
//! the zip's h1 (computed when the caller did not give it) and refuses a zip
//! whose hash or size differs from what the save announced.
//!
//! Backends that keep the zip where they can read it back (a file, memory)
//! hash it there; backends that send it elsewhere (an object store) pass
//! the stream through [`tee`], which spools a copy to a temporary file on
//! the way, so the hash costs disk, not memory.

use crate::{ByteStream, SaveRequest};
use futures::StreamExt;
use modmesh_proto::{Error, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The h1 a save records, from what the caller gave and what was computed
/// from the stored bytes: with a given hash, the computed one must equal it
/// (`Invalid` otherwise, including bytes that are no zip); without one, the
/// computed hash, or `None` for bytes that are no zip.
pub fn settle(req: &SaveRequest, computed: Result<String>) -> Result<Option<String>> {
    match (req.zip_hash.as_deref().filter(|h| !h.is_empty()), computed) {
        (Some(given), Ok(h)) if h == given => Ok(Some(h)),
        (Some(given), Ok(h)) => Err(Error::invalid(format!(
            "cannot save {}: the zip's hash is {h}, not the {given} announced; nothing stored",
            req.coordinates()
        ))),
        (Some(given), Err(e)) => Err(Error::invalid(format!(
            "cannot save {}: {given} announced but the zip has no hash ({e}); nothing stored",
            req.coordinates()
        ))),
        (None, Ok(h)) => Ok(Some(h)),
        (None, Err(_)) => Ok(None),
    }
}

/// `Invalid` unless `got` bytes is what `req` announced (if it did).
pub fn check_size(req: &SaveRequest, got: u64) -> Result<()> {
    match req.zip_size {
        Some(n) if n != got => Err(Error::invalid(format!(
            "cannot save {}: {got} zip bytes arrived, not the {n} announced; nothing stored",
            req.coordinates()
        ))),
        _ => Ok(()),
    }
}

/// A copy of a zip stream being spooled to a temporary file by [`tee`];
/// the file goes when this is dropped.
#[derive(Debug)]
pub struct Spool {
    path: tempfile::TempPath,
    complete: Arc<AtomicBool>,
    size: Arc<AtomicU64>,
}

/// Passes `zip` through unchanged while writing a copy to a temporary file.
/// Once the returned stream has ended without an error, [`Spool::finish`]
/// checks the size and hash against `req`.
pub fn tee(zip: ByteStream) -> Result<(ByteStream, Spool)> {
    let (file, path) = tempfile::Builder::new()
        .prefix("modmesh-zip-")
        .tempfile()
        .map_err(|e| Error::internal(format!("temporary file for hashing a zip: {e}")))?
        .into_parts();
    let complete = Arc::new(AtomicBool::new(false));
    let size = Arc::new(AtomicU64::new(0));
    let file = tokio::fs::File::from_std(file);
    let (done_flag, size_count) = (complete.clone(), size.clone());
    let stream = futures::stream::unfold(
        (zip, Some(file), done_flag, size_count),
        |(mut zip, mut file, done_flag, size_count)| async move {
            let f = file.as_mut()?;
            match zip.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = f.write_all(&chunk).await {
                        let e = Error::internal(format!("spooling a zip for hashing: {e}"));
                        return Some((Err(e), (zip, None, done_flag, size_count)));
                    }
                    size_count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Some((Ok(chunk), (zip, file, done_flag, size_count)))
                }
                Some(Err(e)) => Some((Err(e), (zip, None, done_flag, size_count))),
                None => {
                    if let Err(e) = f.flush().await {
                        let e = Error::internal(format!("spooling a zip for hashing: {e}"));
                        return Some((Err(e), (zip, None, done_flag, size_count)));
                    }
                    done_flag.store(true, Ordering::Release);
                    None
                }
            }
        },
    )
    .boxed();
    Ok((
        stream,
        Spool {
            path,
            complete,
            size,
        },
    ))
}

/// The h1 of a stored zip read back as `stream`: spooled to a temporary
/// file (never whole in memory) and hashed off the async threads. `None` if
/// the bytes are not a readable zip.
pub async fn hash_zip_stream(mut stream: crate::ByteStream) -> Result<Option<String>> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let (file, path) = tempfile::Builder::new()
        .prefix("modmesh-hash-zip-")
        .tempfile()
        .map_err(|e| Error::internal(format!("temporary file for hashing a zip: {e}")))?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    drop(file);
    let p = path.to_path_buf();
    let h = tokio::task::spawn_blocking(move || crate::zip_hash(&p).ok())
        .await
        .map_err(|e| Error::internal(format!("hashing task failed: {e}")))?;
    drop(path);
    Ok(h)
}

impl Spool {
    /// After the tee'd stream ended: checks the size and settles the hash
    /// (see [`settle`]). `Internal` if the stream did not end cleanly.
    pub async fn finish(self, req: &SaveRequest) -> Result<Option<String>> {
        if !self.complete.load(Ordering::Acquire) {
            return Err(Error::internal(
                "the zip stream did not end; nothing stored",
            ));
        }
        check_size(req, self.size.load(Ordering::Relaxed))?;
        let path: PathBuf = self.path.to_path_buf();
        let computed = tokio::task::spawn_blocking(move || crate::zip_hash(&path))
            .await
            .map_err(|e| Error::internal(format!("hashing task failed: {e}")))?;
        drop(self.path);
        settle(req, computed)
    }

    /// Bytes spooled so far.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }
}
