//! Where the guest's sectors live on the host: a file or a block device,
//! behind [`BlockBackend`].
//!
//! The trait is deliberately small (positional read and write, flush,
//! discard, write-zeroes, size) so that the engine can be swapped: today's
//! [`FileBackend`] does synchronous `pread`/`pwrite` on the device's I/O
//! thread, which is simple and correct; an io_uring engine can implement
//! the same operations later without the request code changing.
//!
//! Opening is where the user's mistakes surface, so [`FileBackend::open`]
//! looks before it leaps: it names a missing file, a directory, a FIFO, a
//! size that is not whole sectors, each in a sentence of its own
//! (`error.rs`). It also takes an advisory `flock` on the file: exclusive
//! when writable, shared when read-only, so two lg guests cannot write one
//! image (the way a second QEMU refuses it).
//!
//! Discard and write-zeroes use `fallocate`, which Linux implements for
//! regular files (punching holes, zeroing ranges) and, since 4.9, for block
//! devices too (`PUNCH_HOLE` becomes a write-zeroes with unmap, `ZERO_RANGE`
//! one without), so one code path serves both.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags, Flock, FlockArg};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::config::BlockConfig;
use crate::error::BlockError;
use crate::SECTOR_SIZE;

/// The disk's storage, as the request code uses it. Offsets and lengths
/// are in bytes and have been checked against [`size`](Self::size) before
/// any call.
pub trait BlockBackend: Send + Sync {
    /// The disk's size in bytes: a non-zero multiple of 512.
    fn size(&self) -> u64;
    /// Fills all of `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (the guest's FLUSH).
    fn flush(&self) -> io::Result<()>;
    /// Tells the storage that `len` bytes at `offset` are no longer needed.
    /// What they read as afterwards is unspecified.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros; with `unmap`, the
    /// storage may free them while doing so.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// One page, the alignment `O_DIRECT` asks of the buffers it copies from and
/// to (512 would do for most disks; a page does for all).
#[repr(C, align(4096))]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Page([u8; 4096]);

/// A page-aligned buffer that file data passes through on its way between
/// the host file and guest memory.
///
/// lg's guest memory hands out bounds-checked copies, never pointers, so the
/// sync engine copies through this rather than reading straight into guest
/// RAM: one extra memcpy per request, and no unsafe code. Requests larger
/// than it are done in pieces.
pub(crate) struct BounceBuffer(Vec<Page>);

impl BounceBuffer {
    /// 128 KiB: big enough that a typical request is one system call.
    pub(crate) const DEFAULT_BYTES: usize = 128 * 1024;

    pub(crate) fn new(bytes: usize) -> BounceBuffer {
        let pages = bytes.div_ceil(std::mem::size_of::<Page>()).max(1);
        BounceBuffer(vec![Page([0; 4096]); pages])
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        self.0.as_mut_bytes()
    }
}

/// The synchronous engine: `pread`/`pwrite` on a file or block device.
pub struct FileBackend {
    /// Holds the `flock` for as long as the disk is open.
    file: Flock<File>,
    size: u64,
}

impl FileBackend {
    /// Opens the backing file or host block device (read-only when asked,
    /// `O_DIRECT` when asked), locks it, and finds its size, which must be
    /// a non-zero multiple of 512.
    pub fn open(config: &BlockConfig) -> Result<FileBackend, BlockError> {
        let path = config.path.as_path();
        let writable = !config.read_only;
        let metadata = std::fs::metadata(path).map_err(|e| open_error(path, e, config))?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            return Err(BlockError::IsDirectory { path: path.into() });
        }
        let block_device = file_type.is_block_device();
        if !block_device && !file_type.is_file() {
            let kind = if file_type.is_char_device() {
                "a character device"
            } else if file_type.is_fifo() {
                "a FIFO"
            } else if file_type.is_socket() {
                "a socket"
            } else {
                "not a file"
            };
            return Err(BlockError::NotADisk {
                path: path.into(),
                kind,
            });
        }

        let mut options = OpenOptions::new();
        options.read(true).write(writable);
        if config.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options
            .open(path)
            .map_err(|e| open_error(path, e, config))?;
        let lock = if writable {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockSharedNonblock
        };
        let mut file = Flock::lock(file, lock).map_err(|(_, errno)| match errno {
            Errno::EWOULDBLOCK => BlockError::InUse {
                path: path.into(),
                writable,
            },
            errno => BlockError::Open {
                path: path.into(),
                error: errno.into(),
            },
        })?;

        // A block device's metadata says 0 bytes; its size is where its end
        // is. The file offset this moves is never used: all I/O is
        // positional.
        let size = if block_device {
            file.seek(SeekFrom::End(0))
        } else {
            file.metadata().map(|m| m.len())
        }
        .map_err(|error| BlockError::Size {
            path: path.into(),
            error,
        })?;
        if size == 0 {
            return Err(BlockError::Empty { path: path.into() });
        }
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::NotSectorMultiple {
                path: path.into(),
                size,
            });
        }
        Ok(FileBackend { file, size })
    }

    /// `fallocate`, retried if a signal interrupts it.
    fn fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> Result<(), Errno> {
        let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EFBIG)?;
        let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
        loop {
            match fallocate(&*self.file, mode, offset, len) {
                Err(Errno::EINTR) => continue,
                result => return result,
            }
        }
    }

    /// Writes zeros the slow way, for storage that cannot zero a range.
    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let chunk = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(BounceBuffer::DEFAULT_BYTES);
        let mut zeros = BounceBuffer::new(chunk);
        let zeros = &zeros.bytes()[..chunk];
        let end = offset + len;
        while offset < end {
            let n = zeros.len().min((end - offset) as usize);
            self.write_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Whether `fallocate` failed because the storage cannot do that mode at
/// all, as opposed to failing at it.
fn unsupported(errno: Errno) -> bool {
    matches!(errno, Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::ENOTTY)
}

/// Names what went wrong opening `path`, in the user's terms.
fn open_error(path: &Path, error: io::Error, config: &BlockConfig) -> BlockError {
    let path = path.to_path_buf();
    match error.raw_os_error() {
        Some(libc::ENOENT) => BlockError::NotFound { path },
        Some(libc::EISDIR) => BlockError::IsDirectory { path },
        Some(libc::EACCES | libc::EPERM) => BlockError::PermissionDenied {
            path,
            writable: !config.read_only,
        },
        Some(libc::EROFS) => BlockError::ReadOnlyFilesystem { path },
        Some(libc::EINVAL) if config.direct => BlockError::DirectUnsupported { path },
        _ => BlockError::Open { path, error },
    }
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match self.fallocate(
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is a hint: storage that cannot free space has done
            // all a discard promises by doing nothing.
            Err(errno) if unsupported(errno) => Ok(()),
            result => result.map_err(io::Error::from),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // Cheapest first: a hole (when the guest allows unmapping), then
        // zeroing in place (keeps the space allocated), then writing zeros.
        if unmap {
            match self.fallocate(
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(errno) if unsupported(errno) => {}
                result => return result.map_err(io::Error::from),
            }
        }
        match self.fallocate(
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(errno) if unsupported(errno) => self.write_zero_bytes(offset, len),
            result => result.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_driver::TempFile;

    fn open(file: &TempFile, options: &str) -> Result<FileBackend, BlockError> {
        let value = format!("{}{options}", file.path.display());
        FileBackend::open(&value.parse().unwrap())
    }

    /// Each message names the path, so the user knows which `--block`.
    fn assert_names_path(e: &BlockError, file: &TempFile) {
        let message = e.to_string();
        assert!(
            message.contains(&file.path.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let file = TempFile::unique();
        let e = open(&file, "").err().unwrap();
        assert!(matches!(e, BlockError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("truncate -s"), "{e}");
        assert_names_path(&e, &file);
    }

    #[test]
    fn a_directory_is_not_a_disk() {
        let file = TempFile::unique();
        std::fs::create_dir(&file.path).unwrap();
        for options in ["", ",ro"] {
            let e = open(&file, options).err().unwrap();
            assert!(matches!(e, BlockError::IsDirectory { .. }), "{e}");
            assert_names_path(&e, &file);
        }
    }

    #[test]
    fn a_file_lg_may_not_open_says_so() {
        // Root ignores file permissions, so there the case cannot be
        // produced and is skipped. A file we create is owned by our
        // effective uid: that says who we are without an unsafe call.
        let file = TempFile::new(&[0; 512]);
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file.path).unwrap()) == 0 {
            eprintln!("skipped: running as root, where permission checks do not apply");
            return;
        }
        std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let e = open(&file, "").err().unwrap();
        assert!(
            matches!(e, BlockError::PermissionDenied { writable: true, .. }),
            "{e}"
        );
        assert!(e.to_string().contains(",ro"), "{e}");
        assert_names_path(&e, &file);
        let e = open(&file, ",ro").err().unwrap();
        assert!(
            matches!(
                e,
                BlockError::PermissionDenied {
                    writable: false,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_size_that_is_not_whole_sectors_is_refused_with_the_size() {
        let file = TempFile::new(&[0; 1000]);
        let e = open(&file, "").err().unwrap();
        assert!(
            matches!(e, BlockError::NotSectorMultiple { size: 1000, .. }),
            "{e}"
        );
        let message = e.to_string();
        assert!(message.contains("1000 bytes"), "{message}");
        assert!(message.contains("truncate -s 1024"), "{message}");
        assert_names_path(&e, &file);
    }

    #[test]
    fn an_empty_file_is_refused() {
        let file = TempFile::new(&[]);
        let e = open(&file, ",ro").err().unwrap();
        assert!(matches!(e, BlockError::Empty { .. }), "{e}");
        assert_names_path(&e, &file);
    }

    #[test]
    fn one_writer_or_many_readers() {
        let file = TempFile::new(&[0; 4096]);
        let writer = open(&file, "").unwrap();
        for options in ["", ",ro"] {
            let e = open(&file, options).err().unwrap();
            assert!(matches!(e, BlockError::InUse { .. }), "{e}");
            assert_names_path(&e, &file);
        }
        drop(writer);
        let reader = open(&file, ",ro").unwrap();
        let _second_reader = open(&file, ",ro").unwrap();
        assert!(matches!(
            open(&file, "").err().unwrap(),
            BlockError::InUse { .. }
        ));
        drop(reader);
    }

    #[test]
    fn a_read_only_disk_opens_a_file_lg_cannot_write() {
        let file = TempFile::new(&[5; 2048]);
        std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let disk = open(&file, ",ro").unwrap();
        assert_eq!(disk.size(), 2048);
        let mut buf = [0; 512];
        disk.read_at(&mut buf, 1536).unwrap();
        assert_eq!(buf, [5; 512]);
        // Opened read-only, whoever we are: the write fails at the host.
        assert!(disk.write_at(&[0; 512], 0).is_err());
    }

    #[test]
    fn direct_io_goes_through_the_aligned_bounce_buffer() {
        let file = TempFile::new(&[0; 8192]);
        let disk = match open(&file, ",direct") {
            Ok(disk) => disk,
            Err(BlockError::DirectUnsupported { .. }) => {
                eprintln!("skipped: the temp directory's filesystem has no O_DIRECT");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut bounce = BounceBuffer::new(4096);
        let buf = bounce.bytes();
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        buf[..1024].fill(0x3c);
        disk.write_at(&buf[..1024], 512).unwrap();
        buf.fill(0);
        disk.read_at(&mut buf[..1536], 0).unwrap();
        assert_eq!(&buf[..512], &[0; 512]);
        assert_eq!(&buf[512..1536], &[0x3c; 1024]);
        // Zeroing, by fallocate and by the aligned writes that stand in
        // where fallocate cannot.
        disk.write_zeroes(512, 512, false).unwrap();
        disk.write_zero_bytes(1536, 512).unwrap();
        disk.read_at(&mut buf[..1536], 512).unwrap();
        assert_eq!(&buf[..512], &[0; 512]);
        assert_eq!(&buf[512..1024], &[0x3c; 512]);
        assert_eq!(&buf[1024..1536], &[0; 512]);
    }
}
