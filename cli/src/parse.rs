//! Turning a command line into a [`Command`] by the grammar's table: a one-shot command's
//! arguments as the shell cut them, or a batch or shell line cut into words by the rule
//! its command's row gives. Both go through the same matching of words to arguments and
//! options, so they accept the same commands and refuse them with the same messages.

use std::fmt;

use crate::grammar::{usages, Command, Spec, COMMANDS};
use crate::words::{self, Word};

/// Where kvsd is looked for unless `--addr` says otherwise.
pub const ADDR_DEFAULT: &str = "127.0.0.1:7070";
/// Seconds a reply is waited for unless `--timeout` says otherwise.
pub const TIMEOUT_SECS_DEFAULT: u64 = 30;

/// Why words are not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `--help` or `-h`: the help of `topic` (a command, `index`, or "" for all) was asked
    /// for.
    Help(String),
    /// The words do not fit the command `usage`; `problem` says how, when more than the
    /// usage can.
    Usage {
        problem: Option<String>,
        usage: String,
    },
    /// No command by that name, or none at all.
    Unknown(String),
}

/// One line, as batch mode and the shell print it after `ERR `.
impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Help(topic) => write!(f, "usage: {}", usages(topic).join(" | ")),
            ParseError::Usage {
                problem: Some(problem),
                ..
            } => f.write_str(problem),
            ParseError::Usage { usage, .. } => write!(f, "usage: {usage}"),
            ParseError::Unknown(message) => f.write_str(message),
        }
    }
}

/// Parses one line of batch or shell input.
pub fn parse_line(line: &str) -> Result<Command, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (first, rest) = words::next_word(line);
    let (second, after_second) = words::next_word(rest);
    let (spec, rest) = match find_spec(first, Some(second).filter(|s| !s.is_empty()))? {
        (spec, false) => (spec, rest),
        (spec, true) => (spec, after_second),
    };
    let words = words::split(rest, spec.split).map_err(|problem| ParseError::Usage {
        problem: Some(problem),
        usage: spec.usage(),
    })?;
    match_words(spec, words)
}

/// Parses a command given as separate words (a one-shot command line after the global
/// options): the same grammar as [`parse_line`], with the words already cut by the shell.
pub fn parse_words(words: Vec<String>) -> Result<Command, ParseError> {
    let mut words = words.into_iter();
    let first = words.next().unwrap_or_default();
    let mut rest: Vec<String> = words.collect();
    let (spec, used_second) = find_spec(&first, rest.first().map(String::as_str))?;
    if used_second {
        rest.remove(0);
    }
    match_words(spec, rest.into_iter().map(Word::plain))
}

/// The row of the command named `first` (and `second`, for a two-word name); whether it
/// took `second`. Names are matched whatever their case.
fn find_spec(first: &str, second: Option<&str>) -> Result<(&'static Spec, bool), ParseError> {
    if first.is_empty() {
        return Err(ParseError::Unknown("empty command".into()));
    }
    // A two-word name wins over a one-word one (`backup verify` over `backup`).
    if let Some(second) = second {
        let name = format!(
            "{} {}",
            first.to_ascii_lowercase(),
            second.to_ascii_lowercase()
        );
        if let Some(spec) = COMMANDS.iter().find(|s| s.name == name) {
            return Ok((spec, true));
        }
    }
    if let Some(spec) = COMMANDS.iter().find(|s| s.name.eq_ignore_ascii_case(first)) {
        return Ok((spec, false));
    }
    let group = first.to_ascii_lowercase();
    let is_group = COMMANDS
        .iter()
        .any(|s| s.name.split_once(' ').is_some_and(|(g, _)| g == group));
    if !is_group {
        return Err(ParseError::Unknown(format!("unknown command {first:?}")));
    }
    let Some(second) = second else {
        return Err(ParseError::Usage {
            problem: None,
            usage: usages(&group).join(" | "),
        });
    };
    if second == "--help" || second == "-h" {
        return Err(ParseError::Help(group));
    }
    let name = format!("{group} {}", second.to_ascii_lowercase());
    match COMMANDS.iter().find(|s| s.name == name) {
        Some(spec) => Ok((spec, true)),
        None => Err(ParseError::Unknown(format!(
            "unknown command {:?}",
            format!("{first} {second}")
        ))),
    }
}

/// Sorts words into the arguments and options of `spec`, then builds the command.
fn match_words(
    spec: &'static Spec,
    words: impl IntoIterator<Item = Word>,
) -> Result<Command, ParseError> {
    let usage_error = |problem: Option<String>| ParseError::Usage {
        problem,
        usage: spec.usage(),
    };
    let mut args = Vec::with_capacity(spec.args.len());
    let mut options: Vec<Option<String>> = vec![None; spec.options.len()];
    let mut only_args = false;
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        if !word.literal && !only_args {
            if word.text == "--" {
                only_args = true;
                continue;
            }
            if word.text == "--help" || word.text == "-h" {
                return Err(ParseError::Help(spec.name.to_string()));
            }
            if word.text.starts_with("--") {
                let (name, inline) = match word.text.split_once('=') {
                    Some((name, value)) => (name, Some(value.to_string())),
                    None => (word.text.as_str(), None),
                };
                let Some(at) = spec.options.iter().position(|o| o.name == name) else {
                    return Err(usage_error(Some(format!(
                        "unknown {} option {name}",
                        spec.name
                    ))));
                };
                let value = match (spec.options[at].value, inline) {
                    (Some(_), Some(value)) => value,
                    (Some(_), None) => match words.next() {
                        Some(value) => value.text,
                        None => return Err(usage_error(Some(format!("{name} needs a value")))),
                    },
                    (None, None) => String::new(),
                    (None, Some(_)) => {
                        return Err(usage_error(Some(format!("{name} takes no value"))))
                    }
                };
                if options[at].replace(value).is_some() {
                    return Err(usage_error(Some(format!("{name} is given twice"))));
                }
                continue;
            }
        }
        if args.len() == spec.args.len() {
            return Err(usage_error(Some(format!(
                "unexpected argument {:?}",
                word.text
            ))));
        }
        args.push(Some(word.text));
    }
    let required = spec.args.iter().filter(|a| !a.starts_with('[')).count();
    if args.len() < required {
        return Err(usage_error(None));
    }
    spec.build(args, options)
        .map_err(|problem| usage_error(Some(problem)))
}

/// What a `kvs` command line asks for.
#[derive(Debug, Clone, PartialEq)]
// There is one per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// A command to run once.
    Run(Command),
    /// No command: batch mode, or the shell on a terminal.
    Commands,
    /// The help of a topic ("" for all).
    Help(String),
    Version,
}

/// A parsed `kvs` command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub addr: String,
    pub timeout_secs: u64,
    /// `--user` and `--password-file`: who to authenticate as (ADR 0025).
    pub user: Option<String>,
    pub password_file: Option<String>,
    /// `--tls-ca FILE`: connect over TLS, trusting these authorities.
    pub tls_ca: Option<String>,
    pub action: Action,
}

/// The usage of `kvs` itself.
pub const USAGE: &str = "kvs [--addr HOST:PORT[,HOST:PORT...]] [--timeout SECS] [--user NAME --password-file FILE] [--tls-ca FILE] [COMMAND]";

/// Parses a command line (without the program's name). `--addr` and `--timeout` may come
/// anywhere before a `--`; `--help` and `--version` before the command, and `kvs help
/// COMMAND` asks for a command's help.
pub fn parse_args(args: Vec<String>) -> Result<Invocation, ParseError> {
    let problem = |problem: String| ParseError::Usage {
        problem: Some(problem),
        usage: USAGE.to_string(),
    };
    let (mut addr, mut timeout) = (None, None);
    let (mut user, mut password_file, mut tls_ca) = (None, None, None);
    let mut words = Vec::new();
    let mut args = args.into_iter();
    let mut action = None;
    while let Some(arg) = args.next() {
        if arg == "--" {
            words.push(arg);
            words.extend(args.by_ref());
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match name {
            "--addr" => &mut addr,
            "--timeout" => &mut timeout,
            "--user" => &mut user,
            "--password-file" => &mut password_file,
            "--tls-ca" => &mut tls_ca,
            _ => {
                match arg.as_str() {
                    "--help" | "-h" if words.is_empty() => {
                        action = Some(Action::Help(String::new()))
                    }
                    "--version" | "-V" if words.is_empty() => action = Some(Action::Version),
                    _ => words.push(arg),
                }
                if action.is_some() {
                    break;
                }
                continue;
            }
        };
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(problem(format!("{name} needs a value"))),
        };
        if slot.replace(value).is_some() {
            return Err(problem(format!("{name} is given twice")));
        }
    }
    let action = match (action, words.first()) {
        (Some(action), _) => action,
        (None, None) => Action::Commands,
        (None, Some(word)) if word.eq_ignore_ascii_case("help") => {
            Action::Help(words[1..].join(" "))
        }
        (None, Some(_)) => match parse_words(words) {
            Ok(command) => Action::Run(command),
            Err(ParseError::Help(topic)) => Action::Help(topic),
            Err(e) => return Err(e),
        },
    };
    let timeout_secs = match timeout {
        Some(text) => match text.parse::<u64>() {
            Ok(0) => {
                return Err(problem(
                    "--timeout must be at least 1 second (0 would give up before any reply)"
                        .to_string(),
                ))
            }
            Ok(secs) => secs,
            Err(_) => return Err(problem(format!("bad timeout {text:?}"))),
        },
        None => TIMEOUT_SECS_DEFAULT,
    };
    if user.is_some() != password_file.is_some() {
        return Err(problem(
            "--user and --password-file go together".to_string(),
        ));
    }
    Ok(Invocation {
        addr: addr.unwrap_or_else(|| ADDR_DEFAULT.to_string()),
        timeout_secs,
        user,
        password_file,
        tls_ca,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(args: &[&str]) -> Result<Command, ParseError> {
        parse_words(args.iter().map(|a| a.to_string()).collect())
    }

    fn args(args: &[&str]) -> Result<Invocation, ParseError> {
        parse_args(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn lines_parse_with_values_as_the_rest() {
        assert_eq!(
            parse_line("put k hello world\n").unwrap(),
            Command::Put {
                key: "k".into(),
                value: "hello world".into()
            }
        );
        assert_eq!(
            parse_line("GET k").unwrap(),
            Command::Get {
                key: "k".into(),
                version: false,
                stale: false
            }
        );
        assert_eq!(
            parse_line("scan --start a --limit 5").unwrap(),
            Command::Scan {
                start: Some("a".into()),
                end: None,
                limit: Some(5)
            }
        );
        assert_eq!(
            parse_line("cas k 3 v 2\r\n").unwrap(),
            Command::Cas {
                key: "k".into(),
                version: 3,
                value: "v 2".into()
            }
        );
        // Keys and values are bytes: a word of a key-value line is never an option.
        assert_eq!(
            parse_line("put --k -- --v").unwrap(),
            Command::Put {
                key: "--k".into(),
                value: "-- --v".into()
            }
        );
        assert_eq!(
            parse_line("get --help").unwrap(),
            Command::Get {
                key: "--help".into(),
                version: false,
                stale: false
            }
        );
        assert_eq!(
            parse_line("get --version k").unwrap(),
            Command::Get {
                key: "k".into(),
                version: true,
                stale: false
            }
        );
        assert_eq!(
            parse_line("get --stale k").unwrap(),
            Command::Get {
                key: "k".into(),
                version: false,
                stale: true
            }
        );
        assert_eq!(
            parse_line("cluster transfer-leader 1 3").unwrap(),
            Command::TransferLeader { shard: 1, node: 3 }
        );
        assert!(parse_line("cluster transfer-leader 1").is_err());
        assert!(parse_line("cluster transfer-leader x 3").is_err());
        assert!(parse_line("cluster transfer-leader 99999999999 3").is_err());
    }

    #[test]
    fn a_line_and_the_same_arguments_make_the_same_command() {
        let cases: &[(&str, &[&str])] = &[
            ("ping", &["ping"]),
            ("info", &["info"]),
            ("put k hello world", &["put", "k", "hello world"]),
            ("put k ", &["put", "k", ""]),
            ("cas k 3 v", &["cas", "k", "3", "v"]),
            ("get a key", &["get", "a key"]),
            ("DEL k", &["del", "k"]),
            (
                "scan --start a --end=b --limit 5",
                &["scan", "--start", "a", "--end", "b", "--limit=5"],
            ),
            ("scan --limit 0", &["scan", "--limit", "0"]),
            (
                r#"find c {"a": 1} --sort {"b": -1} --limit 2"#,
                &[
                    "find",
                    "c",
                    r#"{"a": 1}"#,
                    "--sort",
                    r#"{"b": -1}"#,
                    "--limit",
                    "2",
                ],
            ),
            (
                r#"find c --skip 1 --projection {"_id": 0}"#,
                &["find", "c", "--skip", "1", "--projection", r#"{"_id":0}"#],
            ),
            (r#"drop "my coll""#, &["drop", "my coll"]),
            ("drop c", &["Drop", "c"]),
            (
                "index create c -age --unique",
                &["index", "create", "c", "-age", "--unique"],
            ),
            (
                "index create c a,-b --name ab",
                &[
                    "index",
                    "create",
                    "c",
                    r#"{"a": 1, "b": -1}"#,
                    "--name",
                    "ab",
                ],
            ),
            ("INDEX List c", &["index", "list", "c"]),
            ("index drop c a_1", &["index", "drop", "c", "a_1"]),
            (
                r#"update u {"a": 1} {"$set": {"b": 2}} --upsert --many"#,
                &[
                    "update",
                    "u",
                    r#"{"a":1}"#,
                    r#"{"$set":{"b":2}}"#,
                    "--upsert",
                    "--many",
                ],
            ),
            ("remove c {} --one", &["remove", "c", "{}", "--one"]),
            ("count c", &["count", "c"]),
            (
                r#"insert c [{"_id": 1}, {"_id": 2}]"#,
                &["insert", "c", r#"[{"_id":1},{"_id":2}]"#],
            ),
            (
                r#"aggregate c [{"$match": {}}]"#,
                &["aggregate", "c", r#"[{"$match":{}}]"#],
            ),
            (
                r#"explain c {"a": 1} --limit 3"#,
                &["explain", "c", r#"{"a":1}"#, "--limit", "3"],
            ),
            ("collections", &["collections"]),
            ("verify --data-dir d", &["verify", "--data-dir", "d"]),
            ("find c -- {}", &["find", "c", "--", "{}"]),
        ];
        for (line, argv) in cases {
            let from_line = parse_line(line);
            assert!(from_line.is_ok(), "{line}: {from_line:?}");
            assert_eq!(from_line, words(argv), "{line}");
        }
        assert_eq!(
            parse_line("find c --limit 2").unwrap(),
            Command::Find {
                coll: "c".into(),
                filter: None,
                sort: None,
                skip: None,
                limit: Some(2),
                projection: None
            }
        );
        assert_eq!(
            parse_line("index create c a,-b").unwrap(),
            Command::IndexCreate {
                coll: "c".into(),
                key: json!({"a": 1, "b": -1}),
                unique: false,
                name: None
            }
        );
    }

    #[test]
    fn a_line_and_the_same_arguments_are_refused_alike() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("put k", &["put", "k"], "usage: put KEY VALUE"),
            ("get", &["get"], "usage: get KEY [--version] [--stale]"),
            ("cas k x v", &["cas", "k", "x", "v"], "bad version \"x\""),
            (
                "ping extra",
                &["ping", "extra"],
                "unexpected argument \"extra\"",
            ),
            (
                "scan --limit x",
                &["scan", "--limit", "x"],
                "bad limit \"x\"",
            ),
            (
                "scan --limit",
                &["scan", "--limit"],
                "--limit needs a value",
            ),
            (
                "scan --limit 1 --limit 2",
                &["scan", "--limit", "1", "--limit", "2"],
                "--limit is given twice",
            ),
            (
                "scan --frob",
                &["scan", "--frob"],
                "unknown scan option --frob",
            ),
            (
                "find c {} --one",
                &["find", "c", "{}", "--one"],
                "unknown find option --one",
            ),
            (
                "remove c {} --one=1",
                &["remove", "c", "{}", "--one=1"],
                "--one takes no value",
            ),
            (
                "frobnicate",
                &["frobnicate"],
                "unknown command \"frobnicate\"",
            ),
            (
                "index frob c",
                &["index", "frob", "c"],
                "unknown command \"index frob\"",
            ),
            (
                "index create c ,",
                &["index", "create", "c", ","],
                "bad index key \",\"",
            ),
        ];
        for (line, argv, message) in cases {
            let from_line = parse_line(line).unwrap_err();
            assert_eq!(from_line.to_string(), *message, "{line}");
            assert_eq!(Err(from_line), words(argv), "{line}");
        }
        assert!(parse_line("index")
            .unwrap_err()
            .to_string()
            .starts_with("usage: index create COLL KEY"));
        assert_eq!(parse_line("  ").unwrap_err().to_string(), "empty command");
        // JSON: a line that cannot be cut, or an argument that is not JSON.
        assert!(parse_line(r#"find c {"a": }"#)
            .unwrap_err()
            .to_string()
            .starts_with("malformed JSON"));
        assert!(words(&["find", "c", r#"{"a": }"#])
            .unwrap_err()
            .to_string()
            .starts_with("the filter is not JSON"));
    }

    #[test]
    fn help_is_asked_for_by_option_or_by_word() {
        assert_eq!(
            words(&["find", "c", "-h"]),
            Err(ParseError::Help("find".into()))
        );
        assert_eq!(
            parse_line("find --help"),
            Err(ParseError::Help("find".into()))
        );
        assert_eq!(
            parse_line("index --help"),
            Err(ParseError::Help("index".into()))
        );
        assert_eq!(
            args(&["--help"]).unwrap().action,
            Action::Help(String::new())
        );
        assert_eq!(
            args(&["help", "index"]).unwrap().action,
            Action::Help("index".into())
        );
        assert_eq!(
            args(&["index", "-h"]).unwrap().action,
            Action::Help("index".into())
        );
        assert_eq!(
            args(&["put", "k", "--help"]).unwrap().action,
            Action::Help("put".into())
        );
        assert_eq!(args(&["-V"]).unwrap().action, Action::Version);
    }

    #[test]
    fn global_options_come_anywhere_before_a_double_dash() {
        let invocation = args(&["--addr", "h:1", "get", "k", "--timeout", "5"]).unwrap();
        assert_eq!(
            invocation,
            Invocation {
                addr: "h:1".into(),
                timeout_secs: 5,
                user: None,
                password_file: None,
                tls_ca: None,
                action: Action::Run(Command::Get {
                    key: "k".into(),
                    version: false,
                    stale: false
                })
            }
        );
        let invocation = args(&["put", "k", "--addr=h:2", "v"]).unwrap();
        assert_eq!(invocation.addr, "h:2");
        let authed = args(&["--user", "ann", "get", "k", "--password-file=/pw"]).unwrap();
        assert_eq!(authed.user.as_deref(), Some("ann"));
        assert_eq!(authed.password_file.as_deref(), Some("/pw"));
        let alone = args(&["--user", "ann", "get", "k"])
            .unwrap_err()
            .to_string();
        assert!(alone.contains("go together"), "{alone}");
        assert_eq!(invocation.timeout_secs, TIMEOUT_SECS_DEFAULT);
        assert_eq!(
            invocation.action,
            Action::Run(Command::Put {
                key: "k".into(),
                value: "v".into()
            })
        );
        let invocation = args(&["put", "--", "k", "--addr"]).unwrap();
        assert_eq!(invocation.addr, ADDR_DEFAULT);
        assert_eq!(
            invocation.action,
            Action::Run(Command::Put {
                key: "k".into(),
                value: "--addr".into()
            })
        );
        assert_eq!(args(&[]).unwrap().action, Action::Commands);
        assert_eq!(
            args(&["--timeout", "x", "ping"]).unwrap_err().to_string(),
            "bad timeout \"x\""
        );
        assert!(args(&["--timeout", "0", "put", "a", "3"])
            .unwrap_err()
            .to_string()
            .contains("at least 1 second"));
        assert_eq!(
            args(&["ping", "--addr"]).unwrap_err().to_string(),
            "--addr needs a value"
        );
        assert_eq!(
            args(&["--addr", "a", "--addr", "b"])
                .unwrap_err()
                .to_string(),
            "--addr is given twice"
        );
        // In a line, the global options are no options of the command.
        assert_eq!(
            parse_line("find c {} --addr h:1").unwrap_err().to_string(),
            "unknown find option --addr"
        );
    }
}
