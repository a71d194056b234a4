//! Blob storage behind one trait (`object_store::ObjectStore`): a local folder by default,
//! S3-compatible object storage in production. Objects are content-addressed:
//!
//! ```text
//! originals/<blake3>                 the uploaded file, stored once however often uploaded
//! derived/<blake3>/thumbnail.jpg     derived from it, so a duplicate is never transcoded twice
//! derived/<blake3>/hls/master.m3u8
//! derived/<blake3>/hls/<rung>/index.m3u8, seg_00000.ts, ...
//! ```

use std::{
    ops::Range,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path as FsPath, PathBuf},
    sync::Arc,
    time::UNIX_EPOCH,
};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, PutPayload, aws::AmazonS3Builder,
    buffered::BufWriter, chunked::ChunkedStore, local::LocalFileSystem, path::Path,
};
use secrecy::ExposeSecret as _;
use tertulia_plumbing::generations::Generations;
use tokio::io::AsyncWriteExt as _;

use crate::config::BlobConfig;

/// A blob operation failed.
#[derive(Debug, thiserror::Error)]
#[error("blob storage: {0}")]
pub struct BlobError(String);

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<std::io::Error> for BlobError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

/// How much of a local file one read takes when it is streamed out (the local store's own
/// default is 8 KiB, a blocking-pool round trip per 8 KiB): a player's 1 MiB range is one
/// round trip.
const LOCAL_READ_CHUNK: usize = 1024 * 1024;

/// An object opened for reading ([`Blobs::open_object`]): its size and validator, and for a
/// local store the open file, so that serving it costs positioned reads and nothing else.
#[derive(Debug)]
pub struct Opened {
    /// Bytes.
    pub size: u64,
    /// A validator that changes whenever the stored bytes could have (without quotes).
    pub etag: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Local(Arc<LocalObject>),
    Store(Path),
}

/// A file of a local store, open, with what serving it needs to know.
#[derive(Debug)]
struct LocalObject {
    file: std::fs::File,
    size: u64,
    etag: String,
}

/// How long a local object stays open after it was opened (at least; at most twice this).
/// Objects are content-addressed and never rewritten, and a video's objects are reached
/// only through its content hash, which the origin asks the database for again every
/// second: a file kept open serves nothing the origin would not serve anyway. A player's
/// ranges and segments then cost no `open` or `fstat`.
const OPEN_FILE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Local objects kept open per generation, at most (so at most twice this many files: well
/// inside the common default of 1,024 open files, beside the connections).
const OPEN_FILES_MAX: usize = 64;

/// Local objects kept open, by key ([`OPEN_FILE_TTL`]).
#[derive(Debug)]
struct OpenFiles(std::sync::Mutex<Generations<String, Arc<LocalObject>>>);

impl Default for OpenFiles {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Generations::new(
            OPEN_FILE_TTL,
            OPEN_FILES_MAX,
        )))
    }
}

impl OpenFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<String, Arc<LocalObject>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Bytes of an object, in chunks.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// The media blobs.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The folder of a local store: files enter it by hard link when they can.
    local_root: Option<PathBuf>,
    /// Buffers for reads of a local store, used again once the bytes read are sent.
    buffers: Arc<ReadBuffers>,
    /// Files of a local store kept open.
    open_files: Arc<OpenFiles>,
}

/// Buffers kept for reuse, at most (each [`LOCAL_READ_CHUNK`]).
const KEPT_BUFFERS: usize = 16;

/// Read buffers of [`LOCAL_READ_CHUNK`] bytes, reused: a fresh megabyte from the allocator
/// per read came as new pages, and the page faults and zeroing of them cost more than
/// the read. A buffer is zeroed once, when made, and keeps its length (its old bytes are
/// overwritten by the next read, and only the bytes read are ever handed out).
#[derive(Debug, Default)]
struct ReadBuffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl ReadBuffers {
    fn take(&self) -> Vec<u8> {
        self.lock()
            .pop()
            .unwrap_or_else(|| vec![0; LOCAL_READ_CHUNK])
    }

    fn give_back(&self, buffer: Vec<u8>) {
        if buffer.len() == LOCAL_READ_CHUNK {
            let mut kept = self.lock();
            if kept.len() < KEPT_BUFFERS {
                kept.push(buffer);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Bytes read into a pooled buffer (its first `filled`); dropping them (once sent) returns
/// the buffer.
struct Pooled {
    buffer: Vec<u8>,
    filled: usize,
    pool: Arc<ReadBuffers>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.filled]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

/// Key of an original.
#[must_use]
pub fn original(hash: &str) -> Path {
    Path::from(format!("originals/{hash}"))
}

/// Key of an object derived from an original (`rest` relative, already validated).
#[must_use]
pub fn derived(hash: &str, rest: &str) -> Path {
    Path::from(format!("derived/{hash}/{rest}"))
}

impl Blobs {
    /// Opens the configured backend (creating a local root when missing).
    pub fn open(config: &BlobConfig) -> Result<Self, BlobError> {
        let mut local_root = None;
        let store: Arc<dyn ObjectStore> = match config {
            BlobConfig::Fs { root } => {
                std::fs::create_dir_all(root)?;
                local_root = Some(std::fs::canonicalize(root)?);
                Arc::new(ChunkedStore::new(
                    Arc::new(LocalFileSystem::new_with_prefix(root)?),
                    LOCAL_READ_CHUNK,
                ))
            }
            BlobConfig::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
            } => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key.expose_secret());
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Self {
            store,
            local_root,
            buffers: Arc::default(),
            open_files: Arc::default(),
        })
    }

    /// Metadata of an object, `None` when absent.
    pub async fn head(&self, key: &Path) -> Result<Option<ObjectMeta>, BlobError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens an object for [`Blobs::read`], `None` when absent.
    pub async fn open_object(&self, key: &Path) -> Result<Option<Opened>, BlobError> {
        let Some(root) = &self.local_root else {
            return Ok(self.head(key).await?.map(|meta| Opened {
                size: meta.size,
                etag: meta.e_tag.map_or_else(
                    || format!("{:x}-{:x}", meta.size, meta.last_modified.timestamp()),
                    |t| t.trim_matches('"').to_owned(),
                ),
                source: Source::Store(key.clone()),
            }));
        };
        let cached = self.open_files.lock().get(&key.to_string());
        let object = if let Some(object) = cached {
            object
        } else {
            let path = root.join(key.as_ref());
            let opened = tokio::task::spawn_blocking(move || open_local(&path))
                .await
                .map_err(|e| BlobError(e.to_string()))?;
            let object = match opened {
                Ok(object) => Arc::new(object),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            self.open_files
                .lock()
                .insert(key.to_string(), Arc::clone(&object));
            object
        };
        Ok(Some(Opened {
            size: object.size,
            etag: object.etag.clone(),
            source: Source::Local(object),
        }))
    }

    /// Closes a kept-open local object (it is being replaced or deleted).
    fn forget_open(&self, key: &Path) {
        if self.local_root.is_some() {
            self.open_files.lock().remove(&key.to_string());
        }
    }

    /// The bytes `range` of an opened object (within its size).
    pub async fn read(&self, opened: Opened, range: Range<u64>) -> Result<ByteStream, BlobError> {
        match opened.source {
            Source::Local(object) => Ok(read_local(object, range, Arc::clone(&self.buffers))),
            Source::Store(key) => {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    ..GetOptions::default()
                };
                let object = self.store.get_opts(&key, options).await?;
                Ok(object.into_stream().map_err(BlobError::from).boxed())
            }
        }
    }

    /// An object or a byte range of it, `None` when absent.
    pub async fn get(
        &self,
        key: &Path,
        options: GetOptions,
    ) -> Result<Option<GetResult>, BlobError> {
        match self.store.get_opts(key, options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores small bytes.
    pub async fn put_bytes(&self, key: &Path, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.store.put(key, PutPayload::from(bytes)).await?;
        self.forget_open(key);
        Ok(())
    }

    /// Streams a local file into an object (multipart on S3), replacing it atomically. A
    /// local store on the same file system takes the file by hard link instead of a copy
    /// (objects are content-addressed, so an existing one already has these bytes); the
    /// caller must not change the file afterwards.
    pub async fn put_file(&self, key: &Path, file: &FsPath) -> Result<(), BlobError> {
        if let Some(root) = &self.local_root {
            let target = root.join(key.as_ref());
            let source = file.to_owned();
            let linked = tokio::task::spawn_blocking(move || {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                match std::fs::hard_link(&source, &target) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                }
            })
            .await
            .map_err(|e| BlobError(e.to_string()))?;
            match linked {
                Ok(()) => return Ok(()),
                // Another file system (or no links there): copy as any store would.
                Err(e) => tracing::debug!(message = "Blob not linked; copying.", error = %e),
            }
        }
        let mut source = tokio::fs::File::open(file).await?;
        let mut writer = BufWriter::new(Arc::clone(&self.store), key.clone());
        if let Err(e) = tokio::io::copy(&mut source, &mut writer).await {
            writer.abort().await.ok();
            return Err(e.into());
        }
        writer.shutdown().await?;
        Ok(())
    }

    /// Copies an object to a local file.
    pub async fn fetch_to(&self, key: &Path, file: &FsPath) -> Result<(), BlobError> {
        let result = self.store.get(key).await?;
        let mut out = tokio::fs::File::create(file).await?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(())
    }

    /// Every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
        Ok(self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await?)
    }

    /// Deletes an object; absent is fine.
    pub async fn delete(&self, key: &Path) -> Result<(), BlobError> {
        self.forget_open(key);
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the original and everything derived from `hash`.
    pub async fn delete_content(&self, hash: &str) -> Result<(), BlobError> {
        for meta in self.list(&format!("derived/{hash}")).await? {
            self.delete(&meta.location).await?;
        }
        self.delete(&original(hash)).await
    }
}

/// Opens a file of a local store.
fn open_local(path: &FsPath) -> std::io::Result<LocalObject> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    // The local store's own validator (inode, modification time, size).
    let etag = format!("{:x}-{mtime:x}-{:x}", meta.ino(), meta.len());
    Ok(LocalObject {
        file,
        size: meta.len(),
        etag,
    })
}

/// `range` of a local file in reads of [`LOCAL_READ_CHUNK`] into pooled buffers. What the
/// page cache holds is read on the runtime's thread (`preadv2` with `RWF_NOWAIT`, which
/// never waits for the disk: a copy of at most 1 MiB); only what it does not hold goes to
/// the blocking pool. With the file kept open, a cached 1 MiB range costs 6 system calls
/// and 1 context switch, where an open and two trips to the blocking pool cost 35 and 8.
/// Reads are positioned, so any number of streams share one open file.
fn read_local(object: Arc<LocalObject>, range: Range<u64>, pool: Arc<ReadBuffers>) -> ByteStream {
    futures::stream::try_unfold(range, move |range| {
        let object = Arc::clone(&object);
        let pool = Arc::clone(&pool);
        async move {
            if range.is_empty() {
                return Ok(None);
            }
            let len = usize::try_from(range.end - range.start)
                .unwrap_or(usize::MAX)
                .min(LOCAL_READ_CHUNK);
            let start = range.start;
            let mut buffer = pool.take();
            let cached = read_cached(&object.file, &mut buffer[..len], start);
            let buffer = if cached < len {
                tokio::task::spawn_blocking(move || {
                    object
                        .file
                        .read_exact_at(&mut buffer[cached..len], start + cached as u64)?;
                    Ok::<_, std::io::Error>(buffer)
                })
                .await
                .map_err(|e| BlobError(e.to_string()))??
            } else {
                buffer
            };
            let chunk = Bytes::from_owner(Pooled {
                buffer,
                filled: len,
                pool,
            });
            Ok(Some((chunk, start + len as u64..range.end)))
        }
    })
    .boxed()
}

/// Reads into `buffer` from `offset` what the page cache holds, without waiting for the
/// disk; how many bytes were read (from the start of `buffer`).
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buffer.len() {
        let mut slices = [std::io::IoSliceMut::new(&mut buffer[done..])];
        match rustix::io::preadv2(
            file,
            &mut slices,
            offset + done as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) if n > 0 => done += n,
            // The end of the file, not cached (EAGAIN), or a kernel without the flag: the
            // blocking read finds out which.
            _ => break,
        }
    }
    done
}

/// Elsewhere every read goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &std::fs::File, _buffer: &mut [u8], _offset: u64) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[tokio::test]
    async fn a_local_store_takes_a_file_by_link_and_keeps_the_first_copy() {
        let dir = std::env::temp_dir().join(format!("tertulia-blobs-{}", uuid::Uuid::now_v7()));
        let root = dir.join("blobs");
        let blobs = Blobs::open(&BlobConfig::Fs { root: root.clone() }).unwrap();
        let file = dir.join("partial");
        std::fs::write(&file, b"the bytes").unwrap();
        let key = original("abc");
        blobs.put_file(&key, &file).await.unwrap();
        let stored = root.join("originals/abc");
        assert_eq!(
            std::fs::metadata(&stored).unwrap().ino(),
            std::fs::metadata(&file).unwrap().ino(),
            "linked, not copied"
        );
        // Content-addressed: putting the same key again keeps what is there.
        blobs.put_file(&key, &file).await.unwrap();
        std::fs::remove_file(&file).unwrap();
        let object = blobs
            .get(&key, GetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(object.bytes().await.unwrap().as_ref(), b"the bytes");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_local_object_reads_any_range_in_chunks_and_a_missing_one_is_none() {
        let root = std::env::temp_dir().join(format!("tertulia-blobs-{}", uuid::Uuid::now_v7()));
        let blobs = Blobs::open(&BlobConfig::Fs { root: root.clone() }).unwrap();
        let bytes: Vec<u8> = (0..LOCAL_READ_CHUNK * 2 + 1000)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let key = derived("abc", "hls/seg_00000.ts");
        blobs.put_bytes(&key, bytes.clone()).await.unwrap();
        assert!(
            blobs
                .open_object(&derived("abc", "nope"))
                .await
                .unwrap()
                .is_none()
        );
        let whole = blobs.open_object(&key).await.unwrap().unwrap();
        assert_eq!(whole.size, bytes.len() as u64);
        let etag = whole.etag.clone();
        let read = |opened, range| async { blobs.read(opened, range).await.unwrap() };
        let chunks: Vec<Bytes> = read(whole, 0..bytes.len() as u64)
            .await
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.len(), 3, "1 MiB reads");
        assert_eq!(chunks.concat(), bytes);
        let again = blobs.open_object(&key).await.unwrap().unwrap();
        assert_eq!(again.etag, etag, "the same bytes keep their validator");
        let middle = (LOCAL_READ_CHUNK - 10) as u64..(LOCAL_READ_CHUNK * 2 + 500) as u64;
        let chunks: Vec<Bytes> = read(again, middle.clone())
            .await
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            chunks.concat(),
            bytes[usize::try_from(middle.start).unwrap()..usize::try_from(middle.end).unwrap()]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_kept_open_object_is_forgotten_when_replaced_or_deleted() {
        let root = std::env::temp_dir().join(format!("tertulia-blobs-{}", uuid::Uuid::now_v7()));
        let blobs = Blobs::open(&BlobConfig::Fs { root: root.clone() }).unwrap();
        let key = derived("abc", "hls/master.m3u8");
        blobs.put_bytes(&key, b"first".to_vec()).await.unwrap();
        assert_eq!(blobs.open_object(&key).await.unwrap().unwrap().size, 5);
        blobs.put_bytes(&key, b"second".to_vec()).await.unwrap();
        let replaced = blobs.open_object(&key).await.unwrap().unwrap();
        assert_eq!(replaced.size, 6, "the new file, not the one kept open");
        blobs.delete(&key).await.unwrap();
        assert!(blobs.open_object(&key).await.unwrap().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bytes_the_page_cache_does_not_hold_are_read_on_the_blocking_pool() {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let dir = std::env::temp_dir().join(format!("tertulia-blobs-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("object");
        // Written past the page cache (O_DIRECT, from a page-aligned buffer), so none of it
        // is cached until something reads it.
        let size = LOCAL_READ_CHUNK * 2 + 4096;
        let mut buffer = vec![0_u8; size + 4096];
        let aligned = buffer.as_ptr().align_offset(4096);
        let bytes = &mut buffer[aligned..aligned + size];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::try_from(i % 253).unwrap();
        }
        let direct = i32::try_from(rustix::fs::OFlags::DIRECT.bits()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(direct)
            .open(&path)
            .expect("the temporary folder takes O_DIRECT")
            .write_all(bytes)
            .unwrap();
        let object = Arc::new(open_local(&path).unwrap());
        let mut probe = vec![0; 4096];
        assert_eq!(
            read_cached(&object.file, &mut probe, LOCAL_READ_CHUNK as u64),
            0,
            "bytes not in the page cache are not read without waiting"
        );
        let chunks: Vec<Bytes> = read_local(object, 0..size as u64, Arc::default())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks.concat(),
            bytes,
            "read on the blocking pool, in order"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
