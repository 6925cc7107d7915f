use ythread::offload;

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

fn not_a_handler(n: u64) -> u64 {
    offload!(sumn, n)
}

fn main() {
    let _ = not_a_handler(3);
}
