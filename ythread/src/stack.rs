//! Coroutine stacks.

use corosensei::stack::DefaultStack;

/// The stack type every handler coroutine runs on.
pub(crate) type Stack = DefaultStack;

/// Returns a stack of at least `size` bytes.
///
/// # Panics
///
/// Panics if the operating system refuses the mapping.
pub(crate) fn acquire(size: usize) -> Stack {
    DefaultStack::new(size).unwrap_or_else(|err| {
        panic!("ythread: cannot allocate a {size}-byte coroutine stack: {err}")
    })
}

/// Gives back a stack whose coroutine has finished.
pub(crate) fn release(stack: Stack) {
    drop(stack);
}
