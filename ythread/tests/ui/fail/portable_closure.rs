use ythread::{Yieldable, offload, try_offload, yieldable};

// A handler meant for `Processes` or `Remote`: a closure can never cross.
#[yieldable(portable)]
fn handler(n: u64) -> u64 {
    let a = offload!(|| n + 1);
    let b = try_offload!(move || n * 2).unwrap();
    a + b
}

fn main() {
    assert_eq!(handler(3).run(), 10);
}
