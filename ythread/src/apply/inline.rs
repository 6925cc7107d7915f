use super::Apply;
use crate::Job;

/// Runs offloaded work right there, on the driving thread: the 2009 post's
/// default apply. A handler driven with `Inline` behaves, and performs, like
/// the plain threaded function it was written as.
///
/// # Example
///
/// ```
/// use ythread::{Inline, Yieldable, offload, yieldable};
///
/// fn thread_name() -> Option<String> {
///     std::thread::current().name().map(str::to_owned)
/// }
///
/// #[yieldable]
/// fn where_does_it_run() -> Option<String> {
///     offload!(thread_name)
/// }
///
/// // The work ran on this very thread.
/// assert_eq!(where_does_it_run().run_with(&Inline), thread_name());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inline;

impl Apply for Inline {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        job.run();
    }

    fn name(&self) -> &'static str {
        "Inline"
    }
}
