//! The process's allocator: mimalloc, called the way its fast paths want, and
//! told to give memory back after a spike.
//!
//! The `mimalloc` crate's `GlobalAlloc` sends every allocation through
//! `mi_malloc_aligned`, whose fast path covers blocks up to 1 KiB only: a larger
//! one (the request path's boxed future, a response head buffer) took its generic
//! aligned path, ~365 instructions where `mi_malloc` takes ~40 (bench/cost.sh
//! callgrind: 2 such allocations per proxied request, 731 instructions). Here an
//! alignment `mi_malloc` already gives (16 bytes, and no more than the size, as
//! std's own `System` allocator decides) goes to the plain calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// `MI_MAX_ALIGN_SIZE` in mimalloc's types.h: every block `mi_malloc` returns is
/// aligned to it (or to its size, when that is smaller).
const MI_MAX_ALIGN_SIZE: usize = 16;

/// mimalloc as the global allocator.
pub struct Mimalloc;

/// Whether `mi_malloc`'s own alignment is enough for `layout`.
fn plain(layout: &Layout) -> bool {
    layout.align() <= MI_MAX_ALIGN_SIZE && layout.align() <= layout.size()
}

// SAFETY: every pointer handed out comes from mimalloc with at least the layout's
// size and alignment (`plain` only where mi_malloc guarantees the alignment), and
// every pointer taken back goes to mi_free / mi_realloc*, which accept any block
// of mimalloc's whatever call made it.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The new layout keeps the alignment; `plain` must hold for the new size too.
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        if plain(&new) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

/// mimalloc frees the pages of freed memory back to the OS only once its purge
/// delay (10 ms by default) has passed *and* some thread next calls the
/// allocator; a gateway that goes quiet after a spike of 10,000 connections
/// never does, and kept ~320 MB of RSS for good (bench/cost.sh `mem`: 358 MB
/// two seconds after they closed, from 19 MB before). A delay of 0 returned it
/// at once, but also every page a request had just emptied: under steady load
/// 0.5 page faults and 0.05 `madvise` per proxied request (bench/cost.sh, the
/// gateway's own HTTP/1.1 server frees its buffers between requests), the
/// same pages faulted back in by the next one. So: a delay of `PURGE_DELAY_MS`,
/// under which pages in use again are never returned, and a thread of its own
/// that asks mimalloc to purge what has been free longer than that, every
/// `PURGE_EVERY`, whether or not the gateway is busy.
pub fn settings() {
    /// `mi_option_purge_delay` in mimalloc.h (v2 and v3 alike: the 16th option);
    /// libmimalloc-sys names no constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const PURGE_DELAY_MS: std::ffi::c_long = 500;
    const PURGE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
    // SAFETY: mi_option_set stores one integer option, which is all mimalloc reads
    // at each purge decision; no pointer crosses the boundary.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    let purger = std::thread::Builder::new().name("switchyard-purge".into()).spawn(|| loop {
        std::thread::sleep(PURGE_EVERY);
        // SAFETY: mi_collect takes no pointer; it frees this thread's own empty
        // pages (none) and purges the arenas' memory free for longer than the delay.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
    if let Err(e) = purger {
        eprintln!("switchyard: no allocator purge thread ({e}): memory freed after a spike returns later");
    }
}
