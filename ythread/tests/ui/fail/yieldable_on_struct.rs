use ythread::yieldable;

#[yieldable]
struct Handler {
    n: u64,
}

fn main() {}
