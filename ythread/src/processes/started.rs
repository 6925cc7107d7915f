//! The word a worker writes as it starts running a call: shared memory
//! between the parent and the worker, so that after the worker's death the
//! parent knows whether the call may have run.
//!
//! The channel alone cannot tell. A worker killed while it waits for a call
//! (the out-of-memory killer, a `kill -9`) can take the call's bytes off the
//! pipe in the instant before it dies: the pipe is then empty, as if it had
//! read and run the call. The worker stores the call's number here before
//! it decodes and runs it (a plain store: no system call on the way); a
//! worker that died with another number here never began the call, which
//! can go to another worker whatever the function.
//!
//! A worker that scribbles over this page (native code gone wrong) can
//! make a call it ran look unstarted, as it could forge a reply on its
//! channel: the word is ythread's own, and trusted as its frames are.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

/// The descriptor at which a worker finds the word's memory.
pub(crate) const STARTED_FD: i32 = 5;

/// The bytes mapped: one page (the word needs four).
const LEN: usize = 4096;

/// The word, mapped in this process.
#[derive(Debug)]
pub(crate) struct Started {
    word: NonNull<AtomicU32>,
}

// SAFETY: the word is an atomic, in a mapping that lives as long as this
// value; any thread may read or write it.
unsafe impl Send for Started {}
// SAFETY: as for `Send`: every access goes through the atomic.
unsafe impl Sync for Started {}

impl Started {
    /// A new word, 0, and the descriptor of its memory, for the worker
    /// (close-on-exec: the worker gets a copy at [`STARTED_FD`]).
    pub(crate) fn new() -> io::Result<(Started, OwnedFd)> {
        // SAFETY: `memfd_create` takes a C string and flags, and returns a
        // new descriptor (owned from here on) or -1.
        let fd = unsafe { libc::memfd_create(c"ythread-started".as_ptr(), libc::MFD_CLOEXEC) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sizes the file of a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), LEN as libc::off_t) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok((Started::map(&fd)?, fd))
    }

    /// In a worker: the word its parent put at [`STARTED_FD`], which is
    /// closed once mapped (a mapping outlives its descriptor).
    pub(crate) fn inherited() -> io::Result<Started> {
        // SAFETY: `fstat` only writes the `stat` it is given.
        let size = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(STARTED_FD, &mut stat) != 0
                || (stat.st_mode & libc::S_IFMT) != libc::S_IFREG
            {
                return Err(io::Error::other(format!(
                    "descriptor {STARTED_FD} is not the worker's shared word"
                )));
            }
            stat.st_size
        };
        if size < LEN as libc::off_t {
            return Err(io::Error::other(format!(
                "descriptor {STARTED_FD} holds {size} bytes, not the worker's shared word"
            )));
        }
        // SAFETY: the parent placed the file there for this process (checked
        // just above to be a regular file of the right size), and nothing
        // else in the process owns the descriptor: it is taken once, here,
        // before any user code runs.
        let fd = unsafe { OwnedFd::from_raw_fd(STARTED_FD) };
        Started::map(&fd)
    }

    fn map(fd: &OwnedFd) -> io::Result<Started> {
        // SAFETY: maps `LEN` bytes of a file at least that long, shared,
        // at an address the kernel picks; the mapping is unmapped on drop,
        // and nothing else uses it.
        let address = unsafe {
            libc::mmap(
                ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // A mapping is page-aligned, so aligned for an `AtomicU32`, and a
        // file's new bytes are zero: a valid `AtomicU32` of 0.
        let word = NonNull::new(address.cast::<AtomicU32>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Started { word })
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: `word` points into the mapping this value owns, aligned and
        // initialised (see `map`), for as long as `self` lives.
        unsafe { self.word.as_ref() }
    }

    /// In a worker: the call numbered `call` starts now.
    pub(crate) fn store(&self, call: u32) {
        self.word().store(call, Ordering::Release);
    }

    /// The number of the last call the worker started.
    pub(crate) fn load(&self) -> u32 {
        self.word().load(Ordering::Acquire)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value owns; no reference to it
        // outlives `self`.
        unsafe { libc::munmap(self.word.as_ptr().cast(), LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_is_shared_by_two_mappings_of_its_memory() {
        let (ours, fd) = Started::new().unwrap();
        let theirs = Started::map(&fd).unwrap();
        assert_eq!(ours.load(), 0);
        theirs.store(7);
        assert_eq!(ours.load(), 7);
        drop(theirs);
        assert_eq!(ours.load(), 7, "one mapping outlives the other");
    }
}
