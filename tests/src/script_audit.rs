//! Which keys the Lua scripts touch, as Redis itself reports it: a `MONITOR`
//! connection records every command, including those a script runs (`[0 lua]`, logged
//! right after the EVAL/EVALSHA that ran them), and `COMMAND GETKEYS` names the keys of
//! each. A key a script touched that is not among the keys its EVALSHA declared is an
//! undeclared access (what Redis Cluster and Dragonfly need declared).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One script call: its SHA1 (or `eval` for EVAL), the keys it declared, and the
/// commands it ran (each as its arguments).
#[derive(Debug, Default, Clone)]
pub struct ScriptCall {
    pub sha: String,
    pub declared: Vec<String>,
    pub commands: Vec<Vec<String>>,
}

/// A running MONITOR recording; [`Monitor::finish`] ends it and returns the calls.
pub struct Monitor {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

const END: &str = "fleet-script-audit:end";

impl Monitor {
    /// Start recording every command the redis-server on `port` runs.
    pub fn start(port: u16) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect for MONITOR");
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR reply");
        assert!(ok.starts_with("+OK"), "MONITOR refused: {ok}");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = line.trim_end().trim_start_matches('+').to_string();
                let end = l.contains(END);
                sink.lock().unwrap().push(l);
                if end {
                    return;
                }
            }
        });
        Monitor {
            port,
            lines,
            reader,
        }
    }

    /// Stop recording (after every command sent so far) and return the script calls.
    pub fn finish(self) -> Vec<ScriptCall> {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: Option<String> = redis::cmd("GET").arg(END).query(&mut conn).unwrap();
        self.reader.join().expect("the MONITOR reader");
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        let mut calls: Vec<ScriptCall> = Vec::new();
        for line in lines {
            let Some((source, args)) = parse_line(&line) else {
                continue;
            };
            if source == "lua" {
                if let Some(call) = calls.last_mut() {
                    call.commands.push(args);
                }
                continue;
            }
            let name = args.first().map(|a| a.to_ascii_lowercase());
            match name.as_deref() {
                Some("evalsha" | "eval" | "evalsha_ro" | "eval_ro") if args.len() >= 3 => {
                    let n: usize = args[2].parse().unwrap_or(0);
                    calls.push(ScriptCall {
                        sha: if name.as_deref().unwrap().starts_with("evalsha") {
                            args[1].clone()
                        } else {
                            "eval".into()
                        },
                        declared: args[3..(3 + n).min(args.len())].to_vec(),
                        commands: Vec::new(),
                    });
                }
                _ => {}
            }
        }
        calls
    }
}

/// The keys of one command, as `COMMAND GETKEYS` names them (none for a command
/// without keys, such as PUBLISH or TIME).
pub fn command_keys(conn: &mut redis::Connection, args: &[String]) -> Vec<String> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS");
    for a in args {
        cmd.arg(a);
    }
    cmd.query::<Vec<String>>(conn).unwrap_or_default()
}

/// `<time> [<db> <client>] "arg" "arg" …` → (`lua` or the client, the arguments).
fn parse_line(line: &str) -> Option<(String, Vec<String>)> {
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    let source = line[open + 1..close]
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut args = Vec::new();
    let bytes = &line.as_bytes()[close + 1..];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg: Vec<u8> = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                        arg.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                        i += 2;
                    }
                    other => arg.push(other),
                }
            } else {
                arg.push(bytes[i]);
            }
            i += 1;
        }
        i += 1;
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
    Some((source, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_are_parsed_with_their_escapes() {
        let (src, args) =
            parse_line(r#"1796162358.818942 [0 lua] "set" "other{t}" "a b\"c\t\x01""#).unwrap();
        assert_eq!(src, "lua");
        assert_eq!(args, vec!["set", "other{t}", "a b\"c\t\u{1}"]);
        let (src, args) =
            parse_line(r#"1796162358.8 [0 127.0.0.1:41350] "evalsha" "ab" "1" "k{t}""#).unwrap();
        assert_eq!(src, "127.0.0.1:41350");
        assert_eq!(args.len(), 4);
    }
}
