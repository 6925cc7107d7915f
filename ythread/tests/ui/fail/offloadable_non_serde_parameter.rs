use ythread::offloadable;

struct Opaque(u64);

// A parameter serde cannot decode: the error points at its type.
#[offloadable]
fn unwrap(n: u64, opaque: Opaque) -> u64 {
    n + opaque.0
}

fn main() {}
