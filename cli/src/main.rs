//! `kvs`: the command-line client for kvsd. This file picks the mode: a one-shot command
//! (`kvs get KEY`), batch mode when there is no command and stdin is not a terminal, or the
//! interactive shell on a terminal; every mode parses with `parse` and runs with
//! `execute`, so a command means the same in each.

mod backup;
mod batch;
mod cluster;
mod dump;
mod execute;
mod grammar;
mod help;
mod output;
mod parse;
mod shell;
mod txn;
mod users;
mod words;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use kvs_wire::auth::Credentials;
use kvs_wire::tls::TlsOptions;
use kvs_wire::{Client, ClientOptions};

use crate::execute::Status;
use crate::grammar::Command;
use crate::output::{error_line, Lines, MISSING};
use crate::parse::{Action, ParseError};

fn main() -> ExitCode {
    let mut args = Vec::new();
    for (at, arg) in std::env::args_os().skip(1).enumerate() {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("kvs: argument {} is not UTF-8: {arg:?}", at + 1);
                return ExitCode::from(2);
            }
        }
    }
    let invocation = match parse::parse_args(args) {
        Ok(invocation) => invocation,
        Err(e) => return usage_error(&e),
    };
    let credentials = credentials(&invocation);
    let tls = tls(&invocation);
    let command = match invocation.action {
        Action::Help(topic) => {
            return match help::help(&topic, "kvs ") {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(message) => usage_error(&ParseError::Unknown(message)),
            }
        }
        Action::Version => {
            println!("kvs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::Run(Command::Verify { data_dir }) => return run_verify(&data_dir),
        Action::Run(Command::BackupVerify { dir }) => return run_backup_verify(&dir),
        Action::Run(Command::UserAdd { file, name, role }) => {
            return users::add(&file, &name, &role)
        }
        Action::Run(Command::UserRemove { file, name }) => return users::remove(&file, &name),
        Action::Run(Command::Backup { to }) => {
            let credentials = match credentials {
                Ok(credentials) => credentials,
                Err(message) => return usage_error(&ParseError::Unknown(message)),
            };
            return match backup::backup(&invocation.addr, &to, credentials, tls) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kvs: backup failed: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Action::Run(command) => Some(command),
        Action::Commands => None,
    };
    let credentials = match credentials {
        Ok(credentials) => credentials,
        Err(message) => return usage_error(&ParseError::Unknown(message)),
    };
    let options = ClientOptions {
        request_timeout: Duration::from_secs(invocation.timeout_secs),
        credentials,
        tls,
        ..ClientOptions::default()
    };
    let client = match Client::connect_with(&invocation.addr, options) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Some(Command::Dump { to }) => finish(dump::dump(&client, &to)),
        Some(Command::Load { from }) => finish(dump::load(&client, &from)),
        Some(Command::Txn { isolation }) => txn::run(&client, isolation),
        Some(command) => run_one(&client, command),
        None if std::io::stdin().is_terminal() => shell::run(&client),
        None => batch::run(&client),
    }
}

/// `--user NAME --password-file FILE`: the user and the file's first line as the password.
fn credentials(invocation: &parse::Invocation) -> Result<Option<Credentials>, String> {
    let (Some(user), Some(file)) = (&invocation.user, &invocation.password_file) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the password file {file}: {e}"))?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(format!("the password file {file} is empty"));
    }
    Ok(Some(Credentials {
        user: user.clone(),
        password,
    }))
}

/// `--tls-ca FILE`: TLS, trusting FILE's authorities, checking the server's name against the
/// address's host.
fn tls(invocation: &parse::Invocation) -> Option<TlsOptions> {
    invocation.tls_ca.as_ref().map(|ca| TlsOptions {
        ca_file: ca.into(),
        server_name: None,
        client_cert: None,
    })
}

/// `kvs backup verify DIR`: a line per problem; exit code 0 whole, 1 problems, 2 unreadable.
fn run_backup_verify(dir: &str) -> ExitCode {
    match kvs_wire::backup::verify(std::path::Path::new(dir)) {
        Ok((_, problems)) if problems.is_empty() => {
            println!("{dir}: backup is whole");
            ExitCode::SUCCESS
        }
        Ok((_, problems)) => {
            for problem in problems {
                println!("PROBLEM: {problem}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("kvs: {dir}: {e}");
            ExitCode::from(2)
        }
    }
}

/// The end of a dump or load: its summary is already on stderr; an error goes there too.
fn finish(result: Result<dump::Counts, dump::DumpError>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs: {e}");
            ExitCode::from(2)
        }
    }
}

/// A command line that is not a command: exit code 2, with the usage.
fn usage_error(error: &ParseError) -> ExitCode {
    match error {
        ParseError::Usage {
            problem: Some(problem),
            usage,
        } => eprintln!("kvs: {problem}\nusage: {}", with_kvs(usage)),
        ParseError::Usage { usage, .. } => eprintln!("usage: {}", with_kvs(usage)),
        other => eprintln!("kvs: {other}\n'kvs --help' lists the commands"),
    }
    ExitCode::from(2)
}

/// A command's usage as typed on the command line.
fn with_kvs(usage: &str) -> String {
    if usage.starts_with("kvs ") {
        usage.to_string()
    } else {
        format!("kvs {}", usage.replace(" | ", " | kvs "))
    }
}

/// Runs one command: its results on stdout; exit code 0 when done, 1 and `(nil)` on stderr
/// when what it asked for does not exist, 2 and `ERR ...` on stderr when it failed.
fn run_one(client: &Client, command: Command) -> ExitCode {
    let mut out = Lines(std::io::BufWriter::new(std::io::stdout().lock()));
    let result = execute::run(client, command, &mut out);
    let flushed = out.0.flush();
    match (result, flushed) {
        (Err(e), _) => {
            eprintln!("{}", error_line(&e));
            ExitCode::from(2)
        }
        (Ok(_), Err(e)) => {
            eprintln!("{}", error_line(&execute::Failure::Output(e)));
            ExitCode::from(2)
        }
        (Ok(Status::Done), Ok(())) => ExitCode::SUCCESS,
        (Ok(Status::Missing), Ok(())) => {
            eprintln!("{MISSING}");
            ExitCode::from(1)
        }
    }
}

/// `kvs verify`: runs the `kvsd` next to this binary (or on PATH) with `--verify`.
fn run_verify(data_dir: &str) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("kvsd"))
        .filter(|path| path.exists());
    let kvsd = beside.unwrap_or_else(|| "kvsd".into());
    match std::process::Command::new(&kvsd)
        .args(["--verify", "--data-dir", data_dir])
        .status()
    {
        Ok(status) => ExitCode::from(status.code().unwrap_or(2).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("kvs: cannot run {}: {e}", kvsd.display());
            ExitCode::from(2)
        }
    }
}
