use serde::Deserialize;
use ythread::offloadable;

#[derive(Deserialize)]
struct OnlyIn(u64);

// The caller encodes the arguments: a parameter must be `Serialize` too.
#[offloadable]
fn unwrap(value: OnlyIn) -> u64 {
    value.0
}

fn main() {}
