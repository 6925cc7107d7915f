// An `#[offloadable]` function cannot be `unsafe`, nor take `&mut`.
use ythread::offloadable;

#[offloadable]
unsafe fn decode_raw(bytes: Vec<u8>) -> u64 {
    bytes.len() as u64
}

#[offloadable]
fn fill(buffer: &mut Vec<u8>) -> usize {
    buffer.push(1);
    buffer.len()
}

fn main() {
    let _ = (decode_raw, fill);
}
