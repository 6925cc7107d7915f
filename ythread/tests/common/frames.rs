//! The frames of the worker-process protocol (`src/processes/frame.rs`),
//! built by hand: the tests play a worker out of step, or hostile, that
//! speaks the protocol on purpose.

/// Frame kinds and the `INFO` level as the protocol numbers them.
pub const DONE: u8 = 3;
pub const EVENT: u8 = 6;
pub const DROPPED: u8 = 7;
pub const LEVEL_INFO: u8 = 3;

/// A raw frame: length, kind, call number, body.
pub fn raw(kind: u8, call: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = ((1 + 4 + body.len()) as u32).to_le_bytes().to_vec();
    frame.push(kind);
    frame.extend(call.to_le_bytes());
    frame.extend(body);
    frame
}

/// An `INFO` event of call `call`, as a worker's forwarding subscriber
/// sends it.
pub fn raw_event(call: u32, target: &str, message: &str) -> Vec<u8> {
    let body = postcard::to_allocvec(&(LEVEL_INFO, target, message, "")).unwrap();
    raw(EVENT, call, &body)
}

/// The reply channel of the worker process this runs in (descriptor 4),
/// where the frames go.
pub fn reply_channel() -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor 4 is a worker's reply channel, open for the
    // process's life; `ManuallyDrop` keeps the `File` from closing it.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(4) })
}
