// Every form of path that reaches an `#[offloadable]` function passes the
// check of `#[yieldable(portable)]`, without a warning.
#![deny(warnings)]

use ythread::{Yieldable, offload, offloadable, try_offload, yield_from, yieldable};

mod work {
    #[ythread::offloadable]
    pub fn sumn(n: u64) -> u64 {
        (1..=n).sum()
    }

    pub mod deeper {
        #[ythread::offloadable]
        pub(crate) fn r#double(n: u64) -> u64 {
            n * 2
        }

        // `super::` from a handler in another module.
        #[ythread::yieldable(portable)]
        pub(crate) fn handler(n: u64) -> u64 {
            ythread::offload!(super::sumn, n) + ythread::offload!(self::double, n)
        }
    }
}

// Imported, and renamed: the import brings the check along.
use work::deeper::double as twice;
use work::sumn;

#[offloadable]
fn checksum(data: &[u8]) -> u32 {
    data.iter().map(|&b| u32::from(b)).sum()
}

#[yieldable(portable)]
fn handler(xs: Vec<u64>) -> u64 {
    #[offloadable]
    fn local(n: u64) -> u64 {
        n + 1
    }
    let data = vec![1_u8, 2];
    // Nested closures and blocks, other macros' arguments, every form.
    let sums: Vec<u64> = xs
        .iter()
        .map(|&x| {
            let inner = |y: u64| offload!(work::sumn, y);
            inner(x) + { offload!(crate::work::deeper::double, x) }
        })
        .collect();
    let text = format!("{}", offload!(self::checksum, &data));
    sums.iter().sum::<u64>()
        + text.len() as u64
        + offload!(sumn, 2)
        + try_offload!(twice, 1).unwrap()
        + offload!(local, 0)
        + yield_from!(work::deeper::handler(1))
}

// A generic handler offloading a registered function.
#[yieldable(portable)]
fn generic<T: Into<u64> + Send>(x: T) -> u64 {
    offload!(sumn, x.into())
}

fn main() {
    assert_eq!(handler(vec![1, 2]).run(), 10 + 1 + 3 + 2 + 1 + 3);
    assert_eq!(generic(3_u8).run(), 6);
}
