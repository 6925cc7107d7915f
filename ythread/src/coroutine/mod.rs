//! The coroutine engine: runs a handler's body on a stack of its own, and
//! suspends it at each offload point with its work as a job.
//!
//! The engine is one-way, as corosensei's `Coroutine::with_stack` is: a
//! [`Generator`] runs a closure that receives the [`Context`] it suspends
//! through, and knows nothing of handlers (`handler.rs`), strategies
//! (`apply/`) or the macros' run-time surface (`private.rs`), which stand on
//! top of it. From above it uses only the job and error types.
//!
//! - `context.rs`: [`Context`], through which a body suspends with its work;
//! - `generator.rs`: [`Generator`], a body on its coroutine, stepped by hand;
//! - `stack/`: the stacks, recycled (`mod.rs`), the table of every mapped
//!   stack that the signal handler reads (`table.rs`), and the report of an
//!   overflow (`overflow.rs`).

mod context;
mod generator;
mod stack;

pub use context::Context;
pub use generator::{Generator, GeneratorState};
pub use stack::DEFAULT_STACK_SIZE;
pub(crate) use stack::{default_stack_size, watch_main_stack, with_running_context};
