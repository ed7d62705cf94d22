//! The one place a guest's block request is read and checked.
//!
//! A virtio-blk request (virtio 1.2 §5.2.6) is a descriptor chain laid out
//! as
//!
//! ```text
//! readable:  struct virtio_blk_req { le32 type; le32 reserved; le64 sector; }
//!            data            (OUT: what to write; DISCARD/WRITE_ZEROES: segments)
//! writable:  data            (IN: room for what is read; GET_ID: 20 bytes)
//!            u8 status       (the last byte of the last writable buffer)
//! ```
//!
//! and everything in it is the guest's to choose. [`BlockRequest::parse`]
//! turns a chain into a [`BlockRequest`] whose [`Operation`] carries byte
//! offsets and lengths already checked against the disk: whole sectors,
//! inside the capacity, allowed on this disk. The executor in `worker.rs`
//! trusts them and never looks at a header again. A request that fails a
//! check becomes a [`Refusal`], which says which status to give the guest;
//! none of them touches the backing file.
//!
//! How the spec's open questions are answered here:
//! - A chain with no writable byte has nowhere for a status: lg returns it
//!   with nothing written (used length 0) and carries on, rather than
//!   breaking the device for every other request. Linux never sends one;
//!   a driver that does only confuses itself.
//! - A header that is missing or short is an IOERR (there is no type to
//!   call unsupported).
//! - Writes, discards and write-zeroes on a read-only disk are IOERR, as
//!   §5.2.6.2 requires ("MUST set the status byte to VIRTIO_BLK_S_IOERR for
//!   a write request if the VIRTIO_BLK_F_RO feature if offered").
//! - Bytes beyond what a type needs are ignored rather than refused (extra
//!   readable bytes after an IN header, extra writable bytes before an OUT
//!   status), following §2.7.4's "MUST NOT make assumptions about the
//!   particular arrangement of descriptors".
//! - GET_ID writes the 20-byte serial, or as much of it as fits.
//! - DISCARD and WRITE_ZEROES take exactly one segment (`max_discard_seg`
//!   and `max_write_zeroes_seg` are 1); more or none is UNSUPP, as are
//!   unknown flags and the unmap flag on a discard (§5.2.6.2). A segment
//!   past the capacity or longer than the advertised maximum is IOERR.

use std::fmt;

use shadow_mmu::{GuestAddress, GuestMemory};
use virtqueue::{ChainError, DescriptorChain, Reader, Writer};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::SECTOR_SIZE;

/// Request types (§5.2.6).
pub(crate) const VIRTIO_BLK_T_IN: u32 = 0;
pub(crate) const VIRTIO_BLK_T_OUT: u32 = 1;
pub(crate) const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub(crate) const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub(crate) const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub(crate) const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status bytes.
pub(crate) const VIRTIO_BLK_S_OK: u8 = 0;
pub(crate) const VIRTIO_BLK_S_IOERR: u8 = 1;
pub(crate) const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The length of the GET_ID reply.
pub(crate) const VIRTIO_BLK_ID_BYTES: usize = 20;

/// In a write-zeroes segment: the device may deallocate the range.
pub(crate) const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The most sectors one discard or write-zeroes may cover, as advertised in
/// the configuration space: 2 GiB, so that one request is one bounded
/// `fallocate`.
pub(crate) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub(crate) const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;

/// `struct virtio_blk_outhdr`: the front of every request.
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct RequestHeader {
    pub kind: U32,
    pub reserved: U32,
    pub sector: U64,
}

/// `struct virtio_blk_discard_write_zeroes`: one range to discard or zero.
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(crate) struct Segment {
    pub sector: U64,
    pub num_sectors: U32,
    pub flags: U32,
}

const HEADER_BYTES: u64 = std::mem::size_of::<RequestHeader>() as u64;
const SEGMENT_BYTES: u64 = std::mem::size_of::<Segment>() as u64;

/// What a request is checked against: the disk, and what the guest
/// negotiated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiskLimits {
    pub capacity_sectors: u64,
    pub read_only: bool,
    /// VIRTIO_BLK_F_DISCARD was offered and accepted.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES was offered and accepted.
    pub write_zeroes: bool,
}

/// A checked request: byte offsets and lengths, whole sectors, inside the
/// disk, allowed on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// Read `len` bytes from `offset` into the writable buffers.
    Read { offset: u64, len: u32 },
    /// Write the `len` bytes after the header to `offset`.
    Write { offset: u64, len: u32 },
    /// Make completed writes durable.
    Flush,
    /// Write the first `len` bytes of the serial number.
    GetId { len: u32 },
    /// Discard `len` bytes from `offset`.
    Discard { offset: u64, len: u64 },
    /// Zero `len` bytes from `offset`, deallocating them if `unmap`.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// A request that passed every check, with the chain it came in.
pub(crate) struct BlockRequest {
    chain: DescriptorChain,
    operation: Operation,
    /// The last writable byte: inside RAM, since the chain walk checked it.
    status: GuestAddress,
}

/// A request that failed a check: which chain to return and what to tell
/// the guest.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub head: u16,
    /// Where the status byte goes, if the chain has one.
    status: Option<GuestAddress>,
    pub error: RequestError,
}

/// Why a request was refused. Each is the guest's doing.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// No writable byte for the status.
    NoStatusByte,
    /// Fewer readable bytes than a header.
    ShortHeader { len: u64 },
    /// Guest memory refused a read from a checked buffer.
    Unreadable(ChainError),
    /// A type lg does not implement.
    UnknownType { kind: u32 },
    /// DISCARD or WRITE_ZEROES without the feature negotiated.
    NotNegotiated { kind: u32 },
    /// A write of any kind on a read-only disk.
    ReadOnly { kind: u32 },
    /// IN or OUT data that is not whole sectors.
    NotWholeSectors { len: u64 },
    /// Sectors past the end of the disk (or a sector number that overflows).
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    /// DISCARD or WRITE_ZEROES data that is not whole segments.
    PartialSegment { len: u64 },
    /// Not exactly one segment.
    SegmentCount { count: u64 },
    /// Flags lg does not know, or unmap on a discard.
    BadFlags { kind: u32, flags: u32 },
    /// More sectors than the configuration space allows.
    TooManySectors { sectors: u32, max: u32 },
}

impl RequestError {
    /// The status the guest gets for this refusal.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnknownType { .. }
            | RequestError::NotNegotiated { .. }
            | RequestError::SegmentCount { .. }
            | RequestError::BadFlags { .. } => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NoStatusByte => {
                write!(f, "the request has no writable byte for its status")
            }
            RequestError::ShortHeader { len } => write!(
                f,
                "the request has {len} readable bytes, fewer than the {HEADER_BYTES}-byte header"
            ),
            RequestError::Unreadable(e) => write!(f, "the request cannot be read: {e}"),
            RequestError::UnknownType { kind } => write!(f, "request type {kind} is not supported"),
            RequestError::NotNegotiated { kind } => write!(
                f,
                "request type {kind} needs a feature the guest did not accept"
            ),
            RequestError::ReadOnly { kind } => {
                write!(f, "request type {kind} writes, but the disk is read-only")
            }
            RequestError::NotWholeSectors { len } => write!(
                f,
                "the request carries {len} bytes of data, not a multiple of {SECTOR_SIZE}"
            ),
            RequestError::OutOfRange {
                sector,
                sectors,
                capacity,
            } => write!(
                f,
                "{sectors} sectors at sector {sector} run past the end of the {capacity}-sector disk"
            ),
            RequestError::PartialSegment { len } => write!(
                f,
                "{len} bytes of segments is not a multiple of the {SEGMENT_BYTES}-byte segment"
            ),
            RequestError::SegmentCount { count } => {
                write!(f, "{count} segments in one request; lg takes exactly 1")
            }
            RequestError::BadFlags { kind, flags } => {
                write!(f, "request type {kind} has unsupported flags {flags:#x}")
            }
            RequestError::TooManySectors { sectors, max } => {
                write!(f, "{sectors} sectors in one request; the most is {max}")
            }
        }
    }
}

impl std::error::Error for RequestError {}

impl BlockRequest {
    /// Reads and checks the request in `chain`.
    pub fn parse(
        chain: DescriptorChain,
        mem: &GuestMemory,
        limits: &DiskLimits,
    ) -> Result<BlockRequest, Refusal> {
        let head = chain.head();
        // Buffers are never empty and lie in RAM, so the last byte of the
        // last one is an address in RAM.
        let Some(status) = chain
            .writable()
            .last()
            .map(|b| GuestAddress(b.addr.0 + u64::from(b.len) - 1))
        else {
            return Err(Refusal {
                head,
                status: None,
                error: RequestError::NoStatusByte,
            });
        };
        match check(&chain, mem, limits) {
            Ok(operation) => Ok(BlockRequest {
                chain,
                operation,
                status,
            }),
            Err(error) => Err(Refusal {
                head,
                status: Some(status),
                error,
            }),
        }
    }

    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The data a write carries: the readable bytes after the header.
    pub fn data_reader<'a>(&'a self, mem: &'a GuestMemory) -> Reader<'a> {
        let mut reader = self.chain.reader(mem);
        // `check` read the header from here already, so this cannot fail.
        let _ = reader.read_obj::<RequestHeader>();
        reader
    }

    /// Where a read's data or the serial number goes: the writable bytes,
    /// of which the operation's `len` come before the status byte.
    pub fn data_writer<'a>(&'a self, mem: &'a GuestMemory) -> Writer<'a> {
        self.chain.writer(mem)
    }

    /// Writes the status byte; returns the head and the used length
    /// (`data_written` plus the status byte) to hand back to the queue.
    pub fn complete(self, mem: &GuestMemory, status: u8, data_written: u32) -> (u16, u32) {
        let used = write_status(mem, Some(self.status), status) + data_written;
        (self.chain.head(), used)
    }
}

impl Refusal {
    /// Writes the refusal's status, if the chain has room for one; returns
    /// the head and the used length.
    pub fn complete(&self, mem: &GuestMemory) -> (u16, u32) {
        (
            self.head,
            write_status(mem, self.status, self.error.status()),
        )
    }
}

/// Writes a status byte and returns how many bytes that was.
fn write_status(mem: &GuestMemory, addr: Option<GuestAddress>, status: u8) -> u32 {
    match addr.map(|addr| mem.write(addr, &[status])) {
        Some(Ok(())) => 1,
        // A checked buffer that memory refuses is a bug elsewhere; the
        // guest sees nothing written rather than lg panicking.
        Some(Err(_)) | None => 0,
    }
}

/// The checks, in the order the spec implies.
fn check(
    chain: &DescriptorChain,
    mem: &GuestMemory,
    limits: &DiskLimits,
) -> Result<Operation, RequestError> {
    if chain.readable_len() < HEADER_BYTES {
        return Err(RequestError::ShortHeader {
            len: chain.readable_len(),
        });
    }
    let mut reader = chain.reader(mem);
    let header: RequestHeader = reader.read_obj().map_err(RequestError::Unreadable)?;
    let kind = header.kind.get();
    let sector = header.sector.get();
    // Bytes after the header, and room before the status byte. The chain
    // walk bounded both totals by u32::MAX.
    let data_in = chain.readable_len() - HEADER_BYTES;
    let room_out = chain.writable_len() - 1;
    match kind {
        VIRTIO_BLK_T_IN => {
            let offset = sector_range(sector, whole_sectors(room_out)?, limits)?;
            Ok(Operation::Read {
                offset,
                len: room_out as u32,
            })
        }
        VIRTIO_BLK_T_OUT => {
            if limits.read_only {
                return Err(RequestError::ReadOnly { kind });
            }
            let offset = sector_range(sector, whole_sectors(data_in)?, limits)?;
            Ok(Operation::Write {
                offset,
                len: data_in as u32,
            })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Operation::Flush),
        VIRTIO_BLK_T_GET_ID => Ok(Operation::GetId {
            len: room_out.min(VIRTIO_BLK_ID_BYTES as u64) as u32,
        }),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            let (negotiated, max) = if discard {
                (limits.discard, MAX_DISCARD_SECTORS)
            } else {
                (limits.write_zeroes, MAX_WRITE_ZEROES_SECTORS)
            };
            if !negotiated {
                return Err(RequestError::NotNegotiated { kind });
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly { kind });
            }
            if data_in % SEGMENT_BYTES != 0 {
                return Err(RequestError::PartialSegment { len: data_in });
            }
            let count = data_in / SEGMENT_BYTES;
            if count != 1 {
                return Err(RequestError::SegmentCount { count });
            }
            let segment: Segment = reader.read_obj().map_err(RequestError::Unreadable)?;
            let flags = segment.flags.get();
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Err(RequestError::BadFlags { kind, flags });
            }
            let sectors = segment.num_sectors.get();
            if sectors > max {
                return Err(RequestError::TooManySectors { sectors, max });
            }
            let offset = sector_range(segment.sector.get(), u64::from(sectors), limits)?;
            let len = u64::from(sectors) * SECTOR_SIZE;
            Ok(if discard {
                Operation::Discard { offset, len }
            } else {
                Operation::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                }
            })
        }
        _ => Err(RequestError::UnknownType { kind }),
    }
}

/// `len` bytes as a number of sectors, if it is whole sectors.
fn whole_sectors(len: u64) -> Result<u64, RequestError> {
    if len % SECTOR_SIZE == 0 {
        Ok(len / SECTOR_SIZE)
    } else {
        Err(RequestError::NotWholeSectors { len })
    }
}

/// The byte offset of `sectors` sectors at `sector`, if they are all on the
/// disk.
fn sector_range(sector: u64, sectors: u64, limits: &DiskLimits) -> Result<u64, RequestError> {
    let capacity = limits.capacity_sectors;
    match sector.checked_add(sectors) {
        // capacity * 512 is the disk's size in bytes, so sector * 512 fits.
        Some(end) if end <= capacity => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_driver::{header, segment, GuestDriver};

    const LIMITS: DiskLimits = DiskLimits {
        capacity_sectors: 16,
        read_only: false,
        discard: true,
        write_zeroes: true,
    };

    /// Checks one request, as the first on a fresh queue.
    fn parse(
        readable: &[&[u8]],
        writable: &[u32],
        limits: &DiskLimits,
    ) -> Result<Operation, RequestError> {
        let mut driver = GuestDriver::new(16);
        let mut queue = driver.queue();
        driver.add_chain(readable, writable);
        let chain = queue.pop(&driver.mem).unwrap().unwrap();
        BlockRequest::parse(chain, &driver.mem, limits)
            .map(|r| r.operation())
            .map_err(|r| r.error)
    }

    #[test]
    fn reads_and_writes_become_byte_ranges() {
        assert_eq!(
            parse(&[&header(VIRTIO_BLK_T_IN, 2)], &[1024, 1], &LIMITS).unwrap(),
            Operation::Read {
                offset: 1024,
                len: 1024
            }
        );
        // The status may share the data's last buffer.
        assert_eq!(
            parse(&[&header(VIRTIO_BLK_T_IN, 0)], &[513], &LIMITS).unwrap(),
            Operation::Read {
                offset: 0,
                len: 512
            }
        );
        // The header may be split, the data scattered.
        let h = header(VIRTIO_BLK_T_OUT, 15);
        assert_eq!(
            parse(&[&h[..5], &h[5..], &[0; 100], &[0; 412]], &[1], &LIMITS).unwrap(),
            Operation::Write {
                offset: 15 * 512,
                len: 512
            }
        );
    }

    #[test]
    fn the_last_sector_is_in_range_and_the_next_is_not() {
        assert!(parse(&[&header(VIRTIO_BLK_T_IN, 15)], &[512, 1], &LIMITS).is_ok());
        for (sector, len) in [(16, 512), (15, 1024), (u64::MAX, 512), (u64::MAX / 512, 0)] {
            let e = parse(&[&header(VIRTIO_BLK_T_IN, sector)], &[len, 1], &LIMITS).unwrap_err();
            assert!(
                matches!(e, RequestError::OutOfRange { .. }),
                "{sector}: {e}"
            );
            assert_eq!(e.status(), VIRTIO_BLK_S_IOERR);
        }
    }

    #[test]
    fn each_refusal_has_the_spec_status() {
        let ro = DiskLimits {
            read_only: true,
            ..LIMITS
        };
        let no_features = DiskLimits {
            discard: false,
            write_zeroes: false,
            ..LIMITS
        };
        let zeroes = VIRTIO_BLK_T_WRITE_ZEROES;
        // (readable buffers, writable lengths, disk, expected status)
        type Case = (Vec<Vec<u8>>, Vec<u32>, DiskLimits, u8);
        let cases: Vec<Case> = vec![
            (
                vec![header(VIRTIO_BLK_T_OUT, 0), vec![0; 512]],
                vec![1],
                ro,
                1,
            ),
            (vec![header(VIRTIO_BLK_T_IN, 0)], vec![100, 1], LIMITS, 1),
            (
                vec![header(VIRTIO_BLK_T_OUT, 0), vec![0; 10]],
                vec![1],
                LIMITS,
                1,
            ),
            (vec![header(99, 0)], vec![1], LIMITS, 2),
            (vec![vec![0; 15]], vec![1], LIMITS, 1),
            (vec![header(zeroes, 0), segment(0, 8, 0)], vec![1], ro, 1),
            (
                vec![header(zeroes, 0), segment(0, 8, 0)],
                vec![1],
                no_features,
                2,
            ),
            (vec![header(zeroes, 0), vec![0; 20]], vec![1], LIMITS, 1),
            (vec![header(zeroes, 0)], vec![1], LIMITS, 2),
            (
                vec![header(zeroes, 0), segment(0, 1, 0), segment(1, 1, 0)],
                vec![1],
                LIMITS,
                2,
            ),
            (
                vec![header(zeroes, 0), segment(0, 8, 2)],
                vec![1],
                LIMITS,
                2,
            ),
            (
                vec![header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 8, 1)],
                vec![1],
                LIMITS,
                2,
            ),
            (
                vec![header(zeroes, 0), segment(10, 8, 0)],
                vec![1],
                LIMITS,
                1,
            ),
        ];
        for (readable, writable, limits, status) in cases {
            let readable: Vec<&[u8]> = readable.iter().map(Vec::as_slice).collect();
            let e = parse(&readable, &writable, &limits).unwrap_err();
            assert_eq!(e.status(), status, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn discard_and_write_zeroes_become_byte_ranges() {
        assert_eq!(
            parse(
                &[&header(VIRTIO_BLK_T_DISCARD, 0), &segment(8, 8, 0)],
                &[1],
                &LIMITS
            )
            .unwrap(),
            Operation::Discard {
                offset: 4096,
                len: 4096
            }
        );
        assert_eq!(
            parse(
                &[&header(VIRTIO_BLK_T_WRITE_ZEROES, 0), &segment(1, 2, 1)],
                &[1],
                &LIMITS
            )
            .unwrap(),
            Operation::WriteZeroes {
                offset: 512,
                len: 1024,
                unmap: true
            }
        );
    }

    #[test]
    fn a_chain_without_a_status_byte_is_refused_without_one() {
        let mut d = GuestDriver::new(16);
        let mut queue = d.queue();
        d.add_chain(&[&header(VIRTIO_BLK_T_FLUSH, 0)], &[]);
        let chain = queue.pop(&d.mem).unwrap().unwrap();
        let refusal = BlockRequest::parse(chain, &d.mem, &LIMITS).err().unwrap();
        assert!(matches!(refusal.error, RequestError::NoStatusByte));
        assert_eq!(refusal.complete(&d.mem), (0, 0));
    }

    #[test]
    fn get_id_writes_at_most_twenty_bytes() {
        for (room, len) in [(21, 20), (64, 20), (8, 7), (1, 0)] {
            assert_eq!(
                parse(&[&header(VIRTIO_BLK_T_GET_ID, 0)], &[room], &LIMITS).unwrap(),
                Operation::GetId { len }
            );
        }
    }
}
