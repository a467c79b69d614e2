//! The help `kvs --help`, `kvs COMMAND --help` and the shell's `help` print, written from
//! the grammar's table so that it lists exactly the commands and options the parser
//! accepts.

use crate::grammar::{self, Spec};
use crate::parse::{ADDR_DEFAULT, TIMEOUT_SECS_DEFAULT, USAGE};

/// The help of `topic`: a command (`find`), a group of them (`index`), or all (""). On the
/// command line `prefix` is "kvs "; the shell has none.
pub fn help(topic: &str, prefix: &str) -> Result<String, String> {
    let specs: Vec<&Spec> = grammar::topics(topic.trim()).collect();
    if specs.is_empty() {
        return Err(format!("unknown command {topic:?}"));
    }
    let mut text = String::new();
    if topic.trim().is_empty() {
        if !prefix.is_empty() {
            text.push_str(&format!(
                "kvs, the command-line client for kvsd\n\n\
                 usage: {USAGE}\n\n\
                 With a COMMAND, kvs runs it and exits with 0 when done, 1 when what it asked \
                 for does not exist\n((nil) on stderr), 2 on an error (ERR ... on stderr). \
                 With none, it reads commands from\nstdin, one a line, and prints one result \
                 line for each, in order (batch mode), or opens a\nshell on a terminal.\n\n\
                 options:\n  \
                 --addr HOST:PORT  address of kvsd ({ADDR_DEFAULT})\n  \
                 --timeout SECS    seconds to wait for a reply ({TIMEOUT_SECS_DEFAULT})\n  \
                 --user NAME       authenticate as NAME (kvsd --auth required)\n  \
                 --password-file FILE  NAME's password: the file's first line\n  \
                 --tls-ca FILE     connect over TLS, trusting FILE's authorities (PEM)\n  \
                 -h, --help        this help; a command's own: kvs help COMMAND\n  \
                 -V, --version     the version\n\n"
            ));
        }
        text.push_str("commands:\n");
        for spec in &specs {
            text.push_str(&format!(
                "  {}\n      {}\n",
                spec.usage(),
                first_sentence(spec)
            ));
        }
        if prefix.is_empty() {
            text.push_str("  help [COMMAND]\n  quit\n");
        }
        return Ok(text);
    }
    for (at, spec) in specs.iter().enumerate() {
        if at > 0 {
            text.push('\n');
        }
        text.push_str(&format!(
            "usage: {prefix}{}\n{}\n",
            spec.usage(),
            spec.about
        ));
        let width = spec
            .options
            .iter()
            .map(|o| option_words(o).len())
            .max()
            .unwrap_or(0);
        for option in spec.options {
            text.push_str(&format!(
                "  {:width$}  {}\n",
                option_words(option),
                option.about
            ));
        }
    }
    Ok(text)
}

fn option_words(option: &grammar::Opt) -> String {
    match option.value {
        Some(value) => format!("{} {value}", option.name),
        None => option.name.to_string(),
    }
}

/// The summary of a command for the list of all of them.
fn first_sentence(spec: &Spec) -> &'static str {
    let about = spec.about;
    let end = about.find([':', ';', '(']).unwrap_or(about.len());
    about[..end].trim_end_matches(['.', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_listed_and_has_its_own_help() {
        let all = help("", "kvs ").unwrap();
        for spec in grammar::COMMANDS {
            assert!(all.contains(&spec.usage()), "{}", spec.name);
            let own = help(spec.name, "kvs ").unwrap();
            assert!(own.starts_with(&format!("usage: kvs {}", spec.usage())));
            for option in spec.options {
                assert!(own.contains(option.about), "{} {}", spec.name, option.name);
            }
        }
        assert_eq!(
            help("index", "").unwrap().matches("usage: index").count(),
            3
        );
        assert!(help("frob", "").is_err());
    }
}
