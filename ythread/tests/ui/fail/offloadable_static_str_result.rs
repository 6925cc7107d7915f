use ythread::offloadable;

// Even a `'static` reference cannot be decoded into.
#[offloadable]
fn name(n: u64) -> &'static str {
    if n > 0 { "many" } else { "none" }
}

fn main() {}
