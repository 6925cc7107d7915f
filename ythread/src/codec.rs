//! (Replaced by the bounded codec.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_depth: usize,
}
impl Limits {
    pub(crate) const DEFAULT: Limits = Limits { max_depth: 128 };
}
