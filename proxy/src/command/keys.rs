//! Which arguments of a command are keys: from the command table's key positions, and by
//! hand for the commands whose keys move (EVAL's numkeys, XREAD's STREAMS, ...). Used to route
//! by key (cluster slots, and later key prefixes).

use super::{CommandId, flags};

/// Positions (argument indexes) of the keys of a command, given all its arguments.
/// `Err` names a command whose keys cannot be found in these arguments.
pub fn key_positions(cmd: CommandId, args: &[&[u8]]) -> Result<Vec<usize>, &'static str> {
    let Some(info) = cmd.info() else { return Ok(Vec::new()) };
    let argc = args.len();
    let int = |i: usize| -> Result<usize, &'static str> {
        std::str::from_utf8(args.get(i).ok_or("missing numkeys")?)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or("numkeys is not a number")
    };
    let range = |from: usize, n: usize| -> Result<Vec<usize>, &'static str> {
        if from + n > argc {
            return Err("numkeys is larger than the number of arguments");
        }
        Ok((from..from + n).collect())
    };
    let after_token = |token: &[u8]| args.iter().skip(1).position(|a| a.eq_ignore_ascii_case(token)).map(|p| p + 1);
    match info.name {
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => return range(3, int(2)?),
        "ZUNION" | "ZINTER" | "ZDIFF" | "SINTERCARD" | "ZINTERCARD" | "LMPOP" | "ZMPOP" => return range(2, int(1)?),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => {
            let mut keys = vec![1];
            keys.extend(range(3, int(2)?)?);
            return Ok(keys);
        }
        "BLMPOP" | "BZMPOP" => return range(3, int(2)?),
        "XREAD" | "XREADGROUP" => {
            let Some(streams) = after_token(b"STREAMS") else { return Err("no STREAMS argument") };
            let rest = argc - streams - 1;
            if rest == 0 || !rest.is_multiple_of(2) {
                return Err("unbalanced STREAMS list");
            }
            return Ok((streams + 1..streams + 1 + rest / 2).collect());
        }
        "SORT" | "SORT_RO" | "GEORADIUS" | "GEORADIUSBYMEMBER" => {
            let mut keys = if argc > 1 { vec![1] } else { vec![] };
            for token in [&b"STORE"[..], b"STOREDIST"] {
                if let Some(p) = after_token(token)
                    && p + 1 < argc
                {
                    keys.push(p + 1);
                }
            }
            return Ok(keys);
        }
        "MIGRATE" => {
            if argc > 3 && !args[3].is_empty() {
                return Ok(vec![3]);
            }
            return Ok(after_token(b"KEYS").map(|p| (p + 1..argc).collect()).unwrap_or_default());
        }
        // Containers whose subcommands take a key as their first argument.
        "OBJECT" | "XINFO" | "XGROUP" => return Ok(if argc > 2 { vec![2] } else { vec![] }),
        "MEMORY" => {
            return Ok(if argc > 2 && args[1].eq_ignore_ascii_case(b"USAGE") { vec![2] } else { vec![] });
        }
        _ => {}
    }
    if info.first_key <= 0 {
        if info.flags & flags::MOVABLEKEYS != 0 {
            return Err("the keys of this command cannot be located");
        }
        return Ok(Vec::new());
    }
    let first = info.first_key as usize;
    let last = if info.last_key < 0 { argc as i64 + i64::from(info.last_key) } else { i64::from(info.last_key) };
    let step = info.key_step.max(1) as usize;
    if last < first as i64 {
        return Ok(Vec::new());
    }
    Ok((first..=(last as usize).min(argc.saturating_sub(1))).step_by(step).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    fn keys(line: &str) -> Vec<String> {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        key_positions(lookup(args[0]), &args)
            .unwrap()
            .into_iter()
            .map(|i| String::from_utf8_lossy(args[i]).into_owned())
            .collect()
    }

    #[test]
    fn fixed_positions_come_from_the_table() {
        assert_eq!(keys("GET k"), ["k"]);
        assert_eq!(keys("MGET a b c"), ["a", "b", "c"]);
        assert_eq!(keys("MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(keys("RENAME a b"), ["a", "b"]);
        assert_eq!(keys("BLPOP a b 0"), ["a", "b"]);
        assert!(keys("PING").is_empty());
        assert!(keys("DBSIZE").is_empty());
    }

    #[test]
    fn movable_keys_are_found_by_hand() {
        assert_eq!(keys("EVAL s 2 a b x"), ["a", "b"]);
        assert_eq!(keys("EVAL s 0"), Vec::<String>::new());
        assert_eq!(keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"), ["d", "a", "b"]);
        assert_eq!(keys("XREAD COUNT 2 STREAMS s1 s2 0 0"), ["s1", "s2"]);
        assert_eq!(keys("XREADGROUP GROUP g c BLOCK 0 STREAMS s >"), ["s"]);
        assert_eq!(keys("SORT l BY w STORE dst"), ["l", "dst"]);
        assert_eq!(keys("BLMPOP 0 2 a b LEFT"), ["a", "b"]);
        assert_eq!(keys("OBJECT ENCODING k"), ["k"]);
        assert_eq!(keys("MEMORY USAGE k"), ["k"]);
    }

    #[test]
    fn bad_numkeys_is_an_error() {
        let args: Vec<&[u8]> = vec![b"EVAL", b"s", b"5", b"a"];
        assert!(key_positions(lookup(b"EVAL"), &args).is_err());
        let args: Vec<&[u8]> = vec![b"EVAL", b"s", b"x"];
        assert!(key_positions(lookup(b"EVAL"), &args).is_err());
    }
}
