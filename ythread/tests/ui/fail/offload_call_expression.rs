use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

struct Service {
    base: u64,
}

impl Service {
    fn compute(&self, n: u64) -> u64 {
        self.base + n
    }

    #[yieldable]
    fn handle(&self, n: u64) -> u64 {
        // Both evaluate the work here, in the handler: not what offloading means.
        offload!(sumn(n)) + offload!(self.compute(n))
    }
}

fn main() {}
