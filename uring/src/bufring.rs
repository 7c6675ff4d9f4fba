//! The provided-buffer ring (IORING_REGISTER_PBUF_RING) shared by every receive of a driver.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

pub(crate) const BGID: u16 = 0;

/// An anonymous private mapping, page aligned (what the kernel wants for the ring).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping, no aliasing.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(crate) struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    entries: u16,
    buf_size: usize,
    /// Local tail: entries written but maybe not yet published.
    tail: u16,
    published: u16,
}

// SAFETY: the mappings are owned exclusively by this value; the kernel only reads the ring
// entries and writes into buffers it owns at the time.
unsafe impl Send for BufRing {}

impl BufRing {
    /// `entries` is rounded down to a power of two in 1..=32768.
    pub(crate) fn new(entries: u16, buf_size: usize) -> io::Result<Self> {
        let entries = entries.clamp(1, 32768);
        let entries = 1u16 << (15 - entries.leading_zeros().min(15));
        let ring_bytes = (entries as usize * std::mem::size_of::<BufRingEntry>()).max(4096);
        let ring = Mapping::new(ring_bytes)?;
        let bufs = Mapping::new(entries as usize * buf_size)?;
        let mut this = Self {
            ring,
            bufs,
            entries,
            buf_size,
            tail: 0,
            published: 0,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Registers the ring as buffer group [`BGID`].
    pub(crate) fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory lives as long as `self`; the driver unregisters (drops the
        // io_uring) before dropping `self`.
        unsafe {
            submitter.register_buf_ring_with_flags(self.ring.ptr as u64, self.entries, BGID, 0)
        }
    }

    fn base(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    /// Gives buffer `bid` back to the kernel (visible after [`Self::publish`]).
    pub(crate) fn push(&mut self, bid: u16) {
        let index = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: index < entries; the entry at the tail is not read by the kernel until the
        // tail is published past it.
        unsafe {
            let entry = &mut *self.base().add(index);
            entry.set_addr(self.bufs.ptr.add(bid as usize * self.buf_size) as u64);
            entry.set_len(self.buf_size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    pub(crate) fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail field overlays entry 0's reserved field; the kernel reads it
        // with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.base()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    /// The first `len` bytes of buffer `bid`, which the kernel handed us in a completion.
    pub(crate) fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size);
        // SAFETY: in bounds; the buffer is ours until pushed back.
        unsafe { std::slice::from_raw_parts(self.bufs.ptr.add(bid as usize * self.buf_size), len) }
    }
}
