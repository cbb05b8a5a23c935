//! The `winrm-relay` binary: the CLI in [`winrm_relay::cli`], plus a global
//! allocator that zeroes every heap block when it is freed.
//!
//! # Why a zeroing allocator
//! Delegated passwords pass through buffers the relay does not own: sspi's
//! decrypted TSCredentials and NTLM identity buffers, rustls plaintext buffers,
//! `String`s built on the way. `SecretString`/`Zeroizing` wipe only what the
//! relay itself holds; everything else, once freed, would leave its bytes in
//! glibc's free lists until reused, readable in a core image or `/proc/PID/mem`
//! long after the session ended. Wiping on free bounds a password's lifetime in
//! the heap to the lifetime of the objects that hold it.
//!
//! [`zeroizing_alloc::ZeroAlloc`] (1Password, no dependencies) wraps the system
//! allocator: `dealloc` zeroes `layout.size()` bytes through a volatile-loaded
//! `memset` (the compiler cannot elide it as a dead store), then frees. It does
//! not override `realloc`, so the default applies (allocate, copy, `dealloc` the
//! old block): the old block is wiped too, at the price of never growing in place.
//!
//! Scope: the Rust heap only. Stack frames and freed-but-unmapped pages are not
//! covered; the library, unit tests and benches keep the plain system allocator.
//! `integration/tests/test_91_memory.py` checks the result on a core image.

use std::alloc::System;

use zeroizing_alloc::ZeroAlloc;

#[global_allocator]
static ALLOCATOR: ZeroAlloc<System> = ZeroAlloc(System);

fn main() -> std::process::ExitCode {
    winrm_relay::cli::run()
}
