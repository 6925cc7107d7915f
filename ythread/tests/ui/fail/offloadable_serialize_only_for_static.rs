// A parameter whose `Serialize` exists only for `'static`: the parent
// encodes the arguments of any lifetime, so the encoder `#[offloadable]`
// writes must hold for every lifetime, and this one is refused.
use serde::{Deserialize, Serialize, Serializer};
use ythread::offloadable;

#[derive(Deserialize)]
struct Name<'a>(&'a str);

impl Serialize for Name<'static> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

#[offloadable]
fn length(name: Name<'_>) -> usize {
    name.0.len()
}

fn main() {}
