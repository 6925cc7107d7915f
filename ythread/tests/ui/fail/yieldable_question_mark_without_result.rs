use ythread::yieldable;

#[yieldable]
fn handler(text: String) -> u64 {
    let n: u64 = text.parse()?;
    n + 1
}

fn main() {}
