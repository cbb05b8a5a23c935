//! The panic boundary around the security packages (sspi, picky and their
//! ASN.1 parsers) wherever they read bytes from the network, from a client
//! or from a target. Those parsers have panicked on malformed input before:
//! a panic must end one exchange with an error, not the connection task or
//! the process.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// A security package panicked on network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Panicked;

/// Runs `call`, turning a panic into [`Panicked`]. The state `call` worked
/// on may be half-updated: callers throw it away rather than use it again,
/// which is what makes asserting unwind safety sound.
pub(crate) fn contain_panic<T>(call: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|_| Panicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error() {
        assert_eq!(contain_panic(|| 7), Ok(7));
        assert_eq!(contain_panic(|| -> u8 { panic!("parser bug") }), Err(Panicked));
    }
}
