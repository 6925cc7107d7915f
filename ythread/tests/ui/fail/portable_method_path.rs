use ythread::{Yieldable, offload, yieldable};

struct Counter(u64);

impl Counter {
    fn add(n: u64) -> u64 {
        n + 1
    }
}

#[yieldable(portable)]
fn handler(text: String) -> u64 {
    offload!(str::len, &text) as u64 + offload!(Counter::add, 1) + offload!(Vec::<u8>::len, &vec![]) as u64
}

fn main() {
    assert_eq!(handler("ab".into()).run(), 4);
}
