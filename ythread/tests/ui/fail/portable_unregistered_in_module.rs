use ythread::{Yieldable, offload, offloadable, try_offload, yieldable};

mod work {
    #[ythread::offloadable]
    pub fn sumn(n: u64) -> u64 {
        (1..=n).sum()
    }

    pub fn plain(n: u64) -> u64 {
        n + 1
    }
}

#[offloadable]
fn double(n: u64) -> u64 {
    n * 2
}

#[yieldable(portable)]
fn handler(n: u64) -> u64 {
    offload!(work::sumn, n) + offload!(crate::work::plain, n) + try_offload!(work::plain, n).unwrap()
        + offload!(double, n)
}

fn main() {
    assert_eq!(handler(3).run(), 20);
}
