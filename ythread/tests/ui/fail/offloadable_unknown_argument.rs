// `#[offloadable]` takes `idempotent` and nothing else.
use ythread::offloadable;

#[offloadable(retry)]
fn thumbnail(image: Vec<u8>) -> Vec<u8> {
    image
}

#[offloadable(idempotent, fast)]
fn resize(image: Vec<u8>) -> Vec<u8> {
    image
}

fn main() {
    let _ = (thumbnail, resize);
}
