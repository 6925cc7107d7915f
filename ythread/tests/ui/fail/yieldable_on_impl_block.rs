use ythread::yieldable;

struct Service;

#[yieldable]
impl Service {
    fn handle(&self, n: u64) -> u64 {
        n + 1
    }
}

fn main() {}
