//! Everything kvsd takes from glommio, in one place, so the runtime could be replaced.
//!
//! Architecture invariant: this is the only module that names glommio. It provides pinned
//! executors, TCP, timers, cross-core channels and the direct-I/O log disk ([`DmaDisk`],
//! the production [`LogDisk`]).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use kvs_core::log::{LogDisk, LogFile};

pub use glommio::channels::shared_channel::{
    new_bounded as cross_core_channel, ConnectedReceiver, ConnectedSender, SharedReceiver,
    SharedSender,
};
pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::spawn_local;
pub use glommio::timer::sleep;

/// Memory glommio registers with io_uring per executor. RLIMIT_MEMLOCK is 8 MiB on our
/// machines and registration is charged against it, so keep this small; larger DMA buffers
/// come from the ordinary allocator.
const IO_MEMORY_BYTES: usize = 1024 * 1024;
/// Largest single read during recovery.
const READ_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// A handle on a running executor thread.
pub struct Executor<T: Send + 'static>(glommio::ExecutorJoinHandle<T>);

impl<T: Send + 'static> Executor<T> {
    pub fn join(self) -> io::Result<T> {
        self.0.join().map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Starts an executor thread pinned to `cpu` and runs `make_future()` on it to completion.
pub fn spawn_executor<G, F, T>(
    name: &str,
    cpu: Option<usize>,
    make_future: G,
) -> io::Result<Executor<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    glommio::LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .spawn(make_future)
        .map(Executor)
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Yields to other tasks of this executor.
pub async fn yield_now() {
    glommio::yield_if_needed().await;
}

/// Waits `duration`.
pub async fn wait(duration: Duration) {
    sleep(duration).await;
}

fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(error)
}

/// A directory of log segments opened with O_DIRECT and written through io_uring.
#[derive(Debug, Clone)]
pub struct DmaDisk {
    dir: PathBuf,
}

impl DmaDisk {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: &Path) -> io::Result<DmaDisk> {
        std::fs::create_dir_all(dir)?;
        Ok(DmaDisk {
            dir: dir.to_path_buf(),
        })
    }
}

/// A segment file opened for direct I/O.
pub struct DmaLogFile {
    file: DmaFile,
}

/// An aligned buffer for direct I/O.
pub struct AlignedBuffer(DmaBuffer);

impl AsRef<[u8]> for AlignedBuffer {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsMut<[u8]> for AlignedBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

impl LogDisk for DmaDisk {
    type File = DmaLogFile;

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<DmaLogFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(self.dir.join(name))
            .await
            .map_err(to_io)?;
        Ok(DmaLogFile { file })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&self.dir)
            .await
            .map_err(to_io)?;
        dir.sync().await.map_err(to_io)?;
        dir.close().await.map_err(to_io)
    }

    fn path_of(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl LogFile for DmaLogFile {
    type Buffer = AlignedBuffer;

    fn alloc(&self, len: usize) -> AlignedBuffer {
        AlignedBuffer(self.file.alloc_dma_buffer(len))
    }

    async fn write_at(&self, buffer: AlignedBuffer, pos: u64) -> io::Result<()> {
        let len = buffer.0.len();
        let written = self.file.write_at(buffer.0, pos).await.map_err(to_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short direct write: {written} of {len} bytes at {pos}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(READ_CHUNK_BYTES);
            let chunk = self
                .file
                .read_at(pos + out.len() as u64, want)
                .await
                .map_err(to_io)?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(to_io)
    }
}
