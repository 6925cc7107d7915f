use ythread::yieldable;

#[yieldable]
fn handler(n: u64) -> u64 {
    if n == 0 {
        return "none";
    }
    n + 1
}

fn main() {}
