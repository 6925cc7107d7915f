use ythread::yieldable;

#[yieldable]
fn serve_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn main() {}
