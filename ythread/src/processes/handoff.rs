//! What a parent hands a worker process: the setting in `YTHREAD_WORKER`,
//! the descriptors of its channel, and the signal it gets when its parent
//! dies. (The parent's side of the start is `process.rs`; the worker's,
//! `entry.rs` and `child.rs`.)

use super::frame::PROTOCOL;

/// The environment variable that tells a process it is a worker:
/// `protocol:max_frame:max_depth:parent_pid:start`, `3:67108864:128:4242:load`.
pub(crate) const WORKER_ENV: &str = "YTHREAD_WORKER";

/// Where a worker starts serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Before `main`, from the load-time entry: nothing of the program's own
    /// code runs in the worker. For programs that never call `init`, test
    /// binaries among them (their harness would run every test again).
    Load,
    /// At `init()` in `main`, after the program's static initialisers (C++
    /// libraries linked in, say) and the code before `init()`: for programs
    /// that call `init`.
    Main,
}

/// What a worker is told by its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) max_frame: usize,
    pub(crate) max_depth: usize,
    /// The process that started the worker: the variable is only this
    /// process's if that is its parent. A process the work starts inherits
    /// the variable, and must run as the program it is.
    pub(crate) parent: u32,
    pub(crate) start: Start,
}

impl Setting {
    pub(crate) fn encode(&self) -> String {
        let start = match self.start {
            Start::Load => "load",
            Start::Main => "main",
        };
        format!(
            "{PROTOCOL}:{}:{}:{}:{start}",
            self.max_frame, self.max_depth, self.parent
        )
    }

    pub(crate) fn parse(text: &str) -> Option<Setting> {
        let mut fields = text.split(':');
        if fields.next()?.parse::<u32>().ok()? != PROTOCOL {
            return None;
        }
        let setting = Setting {
            max_frame: fields.next()?.parse().ok()?,
            max_depth: fields.next()?.parse().ok()?,
            parent: fields.next()?.parse().ok()?,
            start: match fields.next()? {
                "load" => Start::Load,
                "main" => Start::Main,
                _ => return None,
            },
        };
        fields.next().is_none().then_some(setting)
    }
}

/// The descriptors on which a worker finds its channel: calls come in on
/// the first, replies go out on the second. (The third, `STARTED_FD`, is
/// the memory of the word it marks each call's start in.)
pub(crate) const CALLS_FD: i32 = 3;
pub(crate) const REPLIES_FD: i32 = 4;

/// The signal a worker gets when the thread that started it ends (the
/// parent died): one that nothing else sends, on which the worker kills its
/// process group (`PR_SET_PDEATHSIG` itself reaches the worker alone).
pub(crate) fn parent_death_signal() -> i32 {
    libc::SIGRTMAX()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_reads_back() {
        for start in [Start::Load, Start::Main] {
            let setting = Setting {
                max_frame: 1 << 26,
                max_depth: 128,
                parent: 4242,
                start,
            };
            assert_eq!(Setting::parse(&setting.encode()), Some(setting));
        }
        let bad = [
            String::new(),
            "2".into(),
            "1:67108864".into(),
            format!("{PROTOCOL}:1:2:3:later"),
            format!("{PROTOCOL}:1:2:3:load:4"),
            // Well formed, of another version.
            format!("{}:1:2:3:load", PROTOCOL - 1),
            format!("{}:1:2:3:load", PROTOCOL + 1),
            "x:1:2:3:load:0".into(),
        ];
        for bad in bad {
            assert_eq!(Setting::parse(&bad), None, "{bad}");
        }
        assert!(Setting::parse(&format!("{PROTOCOL}:1:2:3:load")).is_some());
    }
}
