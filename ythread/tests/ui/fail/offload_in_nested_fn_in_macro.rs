use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> String {
    // A nested item is not part of the running handler, inside another
    // macro's arguments too.
    format!("{}", {
        fn helper(n: u64) -> u64 {
            offload!(sumn, n)
        }
        helper(n)
    })
}

fn main() {
    let _ = handler(3);
}
