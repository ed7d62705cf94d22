//! What a device does with a chain: read the request, write the reply.
//!
//! A request may be split across buffers however the guest likes (§2.7.4:
//! "the device MUST NOT make assumptions about the particular arrangement of
//! descriptors"), so a device should not look at buffers one by one. A
//! [`Reader`] presents the readable buffers as one stream and a [`Writer`]
//! the writable ones; a header that straddles two buffers reads like any
//! other. Each is built from one list only, so writing into a device-readable
//! buffer (which §2.7.5 forbids) cannot be expressed at all.
//!
//! Both implement `std::io`'s traits, so a device can `io::copy` between a
//! chain and a file; `read_obj`/`write_obj` handle the fixed-size headers and
//! status bytes, all or nothing.

use std::io;

use shadow_mmu::{GuestAddress, GuestMemory, MemoryError};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::chain::Buffer;
use crate::error::ChainError;

/// A position in a list of buffers, and the copying both directions share.
struct Cursor<'a> {
    mem: &'a GuestMemory,
    /// The buffers not yet finished; the first is `offset` bytes in.
    buffers: &'a [Buffer],
    offset: u32,
    remaining: u64,
}

impl<'a> Cursor<'a> {
    /// Copies between guest memory and `len` host bytes, buffer by buffer,
    /// stopping early at the end of the buffers; returns how many were done.
    fn copy(
        &mut self,
        len: usize,
        mut each: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), MemoryError>,
    ) -> Result<usize, MemoryError> {
        let mut done = 0;
        while done < len {
            let Some((buffer, rest)) = self.buffers.split_first() else {
                break;
            };
            let left_in_buffer = buffer.len - self.offset;
            // Fits in u32: bounded by `left_in_buffer`.
            let n = (len - done).min(left_in_buffer as usize);
            // The chain walk checked `addr + len` lies in RAM, so this cannot
            // overflow.
            let addr = GuestAddress(buffer.addr.0 + u64::from(self.offset));
            each(addr, done..done + n)?;
            done += n;
            self.offset += n as u32;
            self.remaining -= n as u64;
            if self.offset == buffer.len {
                self.buffers = rest;
                self.offset = 0;
            }
        }
        Ok(done)
    }
}

/// The device-readable bytes of a chain, in order.
pub struct Reader<'a> {
    cursor: Cursor<'a>,
    read: u64,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(mem: &'a GuestMemory, buffers: &'a [Buffer], len: u64) -> Reader<'a> {
        Reader {
            cursor: Cursor {
                mem,
                buffers,
                offset: 0,
                remaining: len,
            },
            read: 0,
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.cursor.remaining
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads a fixed-size value (a request header, say), or nothing at all if
    /// fewer bytes than its size are left.
    pub fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, ChainError> {
        let mut value = T::new_zeroed();
        let bytes = value.as_mut_bytes();
        if bytes.len() as u64 > self.remaining() {
            return Err(ChainError::NotEnoughData {
                wanted: bytes.len(),
                available: self.remaining(),
            });
        }
        self.read_some(bytes)?;
        Ok(value)
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, MemoryError> {
        let mem = self.cursor.mem;
        let n = self
            .cursor
            .copy(buf.len(), |addr, range| mem.read(addr, &mut buf[range]))?;
        self.read += n as u64;
        Ok(n)
    }
}

impl io::Read for Reader<'_> {
    /// Fills as much of `buf` as the readable bytes allow; `Ok(0)` at the end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_some(buf)
            .map_err(|e| io::Error::other(ChainError::Memory(e)))
    }
}

/// The device-writable bytes of a chain, in order.
pub struct Writer<'a> {
    cursor: Cursor<'a>,
    /// At most the chain's writable length, which the walk bounded by
    /// `u32::MAX`: exactly what the used ring reports back.
    written: u32,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(mem: &'a GuestMemory, buffers: &'a [Buffer], len: u64) -> Writer<'a> {
        Writer {
            cursor: Cursor {
                mem,
                buffers,
                offset: 0,
                remaining: len,
            },
            written: 0,
        }
    }

    /// Room left, in bytes.
    pub fn remaining(&self) -> u64 {
        self.cursor.remaining
    }

    /// Bytes written so far: what to pass to `Queue::add_used`.
    pub fn bytes_written(&self) -> u32 {
        self.written
    }

    /// Writes all of `data`, or nothing if it does not fit.
    pub fn write_slice(&mut self, data: &[u8]) -> Result<(), ChainError> {
        if data.len() as u64 > self.remaining() {
            return Err(ChainError::WouldOverflow {
                wanted: data.len(),
                available: self.remaining(),
            });
        }
        self.write_some(data)?;
        Ok(())
    }

    /// Writes a fixed-size value (a reply header, a status byte), or nothing
    /// if it does not fit.
    pub fn write_obj<T: IntoBytes + Immutable>(&mut self, value: &T) -> Result<(), ChainError> {
        self.write_slice(value.as_bytes())
    }

    fn write_some(&mut self, data: &[u8]) -> Result<usize, MemoryError> {
        let mem = self.cursor.mem;
        let n = self
            .cursor
            .copy(data.len(), |addr, range| mem.write(addr, &data[range]))?;
        // n <= the writable length <= u32::MAX, so neither conversion nor sum
        // can overflow.
        self.written += n as u32;
        Ok(n)
    }
}

impl io::Write for Writer<'_> {
    /// Writes as much of `buf` as there is room for; with no room at all,
    /// fails with `WouldOverflow` (as `ErrorKind::WriteZero`) so that
    /// `write_all` reports what went wrong.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.remaining() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                ChainError::WouldOverflow {
                    wanted: buf.len(),
                    available: 0,
                },
            ));
        }
        self.write_some(buf)
            .map_err(|e| io::Error::other(ChainError::Memory(e)))
    }

    /// Nothing to flush: every write lands in guest memory at once.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use zerocopy::little_endian::{U32, U64};
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    use super::*;
    use crate::test_driver::GuestDriver;
    use crate::DescriptorChain;

    /// A request header shaped like virtio-blk's.
    #[repr(C)]
    #[derive(Debug, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    struct Header {
        kind: U32,
        reserved: U32,
        sector: U64,
    }

    fn pop(driver: &mut GuestDriver, readable: &[&[u8]], writable: &[u32]) -> DescriptorChain {
        let mut queue = driver.queue();
        driver.add_chain(readable, writable);
        queue.pop(&driver.mem).unwrap().unwrap()
    }

    #[test]
    fn a_header_split_across_buffers_reads_whole() {
        let mut driver = GuestDriver::new(8);
        let header = Header {
            kind: 1.into(),
            reserved: 0.into(),
            sector: 0x1234_5678_9abc.into(),
        };
        let bytes = header.as_bytes();
        let chain = pop(
            &mut driver,
            &[&bytes[..3], &bytes[3..11], &bytes[11..], b"data"],
            &[],
        );
        let mut reader = chain.reader(&driver.mem);
        assert_eq!(reader.read_obj::<Header>().unwrap(), header);
        assert_eq!((reader.bytes_read(), reader.remaining()), (16, 4));
        // Too big for what is left: an error, and nothing consumed.
        assert!(matches!(
            reader.read_obj::<u64>(),
            Err(ChainError::NotEnoughData {
                wanted: 8,
                available: 4
            })
        ));
        // io::Read hands over what is there, then reports the end.
        let mut buf = [0; 10];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"data");
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_reply_split_across_buffers_writes_whole() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        let posted = driver.add_chain(&[b"req"], &[5, 7]);
        let chain = queue.pop(&driver.mem).unwrap().unwrap();
        let mut writer = chain.writer(&driver.mem);
        writer.write_obj(&0x0102_0304_0506_0708u64).unwrap();
        writer.write_slice(b"abcd").unwrap();
        assert_eq!((writer.bytes_written(), writer.remaining()), (12, 0));
        assert_eq!(driver.read_bytes(posted.writable[0].0, 5), [8, 7, 6, 5, 4]);
        assert_eq!(
            driver.read_bytes(posted.writable[1].0, 7),
            [3, 2, 1, b'a', b'b', b'c', b'd']
        );
    }

    #[test]
    fn a_chain_without_writable_buffers_takes_no_reply() {
        let mut driver = GuestDriver::new(8);
        let chain = pop(&mut driver, &[b"read only"], &[]);
        let mut writer = chain.writer(&driver.mem);
        assert!(matches!(
            writer.write_obj(&0u8),
            Err(ChainError::WouldOverflow {
                wanted: 1,
                available: 0
            })
        ));
        let err = writer.write(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert!(matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<ChainError>()),
            Some(ChainError::WouldOverflow { .. })
        ));
        assert_eq!(writer.bytes_written(), 0);
        assert_eq!(
            driver.read_bytes(chain.readable()[0].addr.0, 9),
            b"read only"
        );
    }

    #[test]
    fn writing_past_the_end_never_reaches_the_readable_buffers() {
        let mut driver = GuestDriver::new(8);
        let chain = pop(&mut driver, &[b"keep"], &[4]);
        let mut writer = chain.writer(&driver.mem);
        // All-or-nothing: too big, so nothing is written.
        assert!(matches!(
            writer.write_slice(b"12345"),
            Err(ChainError::WouldOverflow {
                wanted: 5,
                available: 4
            })
        ));
        assert_eq!(writer.bytes_written(), 0);
        // io::Write: as much as fits, then an error for the rest.
        assert!(writer.write_all(b"12345").is_err());
        assert_eq!(writer.bytes_written(), 4);
        assert_eq!(driver.read_bytes(chain.writable()[0].addr.0, 4), b"1234");
        assert_eq!(driver.read_bytes(chain.readable()[0].addr.0, 4), b"keep");
    }
}
