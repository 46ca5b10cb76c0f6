//! The command table: what the proxy knows of each Redis command.
//!
//! `table.rs` is generated from a real redis-server's `COMMAND` reply
//! (`scripts/gen-command-table.py`): arity, flags and key positions. On top of it, [`Special`]
//! says which commands the proxy must treat differently from a plain request/reply exchange on a
//! shared connection: those that change connection state, block, or subscribe.

pub mod keys;
mod table;

use std::sync::OnceLock;

pub use table::COMMANDS;

/// Command flags, as Redis reports them.
pub mod flags {
    pub const WRITE: u16 = 1 << 0;
    pub const READONLY: u16 = 1 << 1;
    pub const DENYOOM: u16 = 1 << 2;
    pub const ADMIN: u16 = 1 << 3;
    pub const PUBSUB: u16 = 1 << 4;
    pub const NOSCRIPT: u16 = 1 << 5;
    pub const BLOCKING: u16 = 1 << 6;
    pub const LOADING: u16 = 1 << 7;
    pub const STALE: u16 = 1 << 8;
    pub const FAST: u16 = 1 << 9;
    pub const MOVABLEKEYS: u16 = 1 << 10;
    pub const NO_MULTI: u16 = 1 << 11;
    pub const NO_AUTH: u16 = 1 << 12;
    pub const ALLOW_BUSY: u16 = 1 << 13;
}

/// One row of the command table.
#[derive(Debug)]
pub struct CommandInfo {
    pub name: &'static str,
    /// Redis's arity: N means exactly N arguments (name included), -N at least N.
    pub arity: i16,
    pub flags: u16,
    pub first_key: i16,
    pub last_key: i16,
    pub key_step: i16,
}

/// Index into [`COMMANDS`]; [`CommandId::UNKNOWN`] for names the table lacks (module commands,
/// newer Redis releases), which are forwarded like any other command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommandId(pub u16);

impl CommandId {
    pub const UNKNOWN: CommandId = CommandId(u16::MAX);

    /// Slots in per-command arrays: every table entry plus one for unknown commands.
    pub fn count() -> usize {
        COMMANDS.len() + 1
    }

    #[inline]
    pub fn index(self) -> usize {
        if self == Self::UNKNOWN { COMMANDS.len() } else { self.0 as usize }
    }

    pub fn info(self) -> Option<&'static CommandInfo> {
        COMMANDS.get(self.0 as usize)
    }

    /// Lower-case name for metrics labels.
    pub fn label(self) -> String {
        self.info().map_or_else(|| "unknown".to_owned(), |i| i.name.to_ascii_lowercase())
    }

    #[inline]
    pub fn special(self) -> Special {
        specials().get(self.0 as usize).copied().unwrap_or(Special::None)
    }

    #[inline]
    pub fn has_flag(self, flag: u16) -> bool {
        self.info().is_some_and(|i| i.flags & flag != 0)
    }
}

const MAX_NAME: usize = 24;

/// Commands bucketed by name length and first letter: a lookup compares one to three names.
fn buckets() -> &'static [Vec<u16>] {
    static BUCKETS: OnceLock<Vec<Vec<u16>>> = OnceLock::new();
    BUCKETS.get_or_init(|| {
        let mut b = vec![Vec::new(); (MAX_NAME + 1) * 32];
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(c.name.len() <= MAX_NAME, "command name {} is longer than {MAX_NAME}", c.name);
            b[bucket(c.name.as_bytes())].push(i as u16);
        }
        b
    })
}

#[inline]
fn bucket(name: &[u8]) -> usize {
    name.len() * 32 + (name[0].to_ascii_uppercase() & 31) as usize
}

/// Looks a command name up, ignoring case, without allocating.
#[inline]
pub fn lookup(name: &[u8]) -> CommandId {
    if name.is_empty() || name.len() > MAX_NAME {
        return CommandId::UNKNOWN;
    }
    for &i in &buckets()[bucket(name)] {
        if COMMANDS[i as usize].name.as_bytes().eq_ignore_ascii_case(name) {
            return CommandId(i);
        }
    }
    CommandId::UNKNOWN
}

/// Commands the client session handles itself or routes specially.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    None,
    Auth,
    Hello,
    Select,
    Quit,
    Reset,
    Client,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE: the connection becomes a subscriber.
    Subscribe,
    /// MONITOR, SYNC, PSYNC, REPLCONF: the connection becomes a stream (REPLCONF ACK, for one,
    /// has no reply).
    Stream,
    /// Commands that always block the connection (BLPOP, WAIT, ...).
    Blocking,
    /// XREAD / XREADGROUP: blocking only with the BLOCK option.
    MaybeBlocking,
    /// WAIT / WAITAOF: block until the client's earlier writes are replicated.
    Wait,
    /// READONLY / READWRITE: per-connection cluster read mode.
    ReadMode,
}

/// For a [`Special::MaybeBlocking`] command (XREAD, XREADGROUP): whether it has the BLOCK
/// option (looked for before STREAMS, so a stream named "block" does not count).
pub fn blocks(frame: &[u8]) -> bool {
    crate::resp::request::args(frame)
        .skip(1)
        .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
        .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

fn specials() -> &'static [Special] {
    static SPECIALS: OnceLock<Vec<Special>> = OnceLock::new();
    SPECIALS.get_or_init(|| {
        COMMANDS
            .iter()
            .map(|c| match c.name {
                "AUTH" => Special::Auth,
                "HELLO" => Special::Hello,
                "SELECT" => Special::Select,
                "QUIT" => Special::Quit,
                "RESET" => Special::Reset,
                "CLIENT" => Special::Client,
                "MULTI" => Special::Multi,
                "EXEC" => Special::Exec,
                "DISCARD" => Special::Discard,
                "WATCH" => Special::Watch,
                "UNWATCH" => Special::Unwatch,
                "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => Special::Subscribe,
                "MONITOR" | "SYNC" | "PSYNC" | "REPLCONF" => Special::Stream,
                "XREAD" | "XREADGROUP" => Special::MaybeBlocking,
                "READONLY" | "READWRITE" => Special::ReadMode,
                // WAIT and WAITAOF block without carrying the flag.
                "WAIT" | "WAITAOF" => Special::Wait,
                _ if c.flags & flags::BLOCKING != 0 => Special::Blocking,
                _ => Special::None,
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_rejects_unknown_names() {
        let get = lookup(b"get");
        assert_eq!(get.info().unwrap().name, "GET");
        assert_eq!(lookup(b"GeT"), get);
        assert_eq!(lookup(b"NOSUCHCOMMAND"), CommandId::UNKNOWN);
        assert_eq!(lookup(b""), CommandId::UNKNOWN);
        assert_eq!(lookup(&[b'A'; 64]), CommandId::UNKNOWN);
        assert_eq!(CommandId::UNKNOWN.index(), COMMANDS.len());
    }

    #[test]
    fn the_table_is_sorted_for_binary_search() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn state_changing_and_blocking_commands_are_special() {
        for (name, want) in [
            ("blpop", Special::Blocking),
            ("BZPOPMIN", Special::Blocking),
            ("blmove", Special::Blocking),
            ("wait", Special::Wait),
            ("xread", Special::MaybeBlocking),
            ("subscribe", Special::Subscribe),
            ("ssubscribe", Special::Subscribe),
            ("monitor", Special::Stream),
            ("multi", Special::Multi),
            ("select", Special::Select),
            ("hello", Special::Hello),
            ("get", Special::None),
            ("eval", Special::None),
        ] {
            assert_eq!(lookup(name.as_bytes()).special(), want, "{name}");
        }
        assert!(lookup(b"set").has_flag(flags::WRITE));
        assert!(lookup(b"get").has_flag(flags::READONLY));
    }
}
