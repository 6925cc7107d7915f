use ythread::yieldable;

trait Service {
    #[yieldable]
    fn handle(&self, n: u64) -> u64;
}

fn main() {}
