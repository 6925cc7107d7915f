use ythread::offloadable;

// A result tied to an argument cannot come back from another process.
#[offloadable]
fn first_word(text: &str) -> &str {
    text.split(' ').next().unwrap_or("")
}

fn main() {}
