//! `kvs user add --file FILE NAME ROLE` and `kvs user remove --file FILE NAME`: the users file
//! kvsd reads with `--users-file` (ADR 0025, docs/security.md), one `NAME ROLE HASH` a line.
//! The password is read from the terminal without echo, or as the first line of stdin when
//! stdin is not a terminal; only its salted argon2id verifier is written. The file is
//! replaced whole (written beside it, fsynced, renamed) and readable by its owner only.

use std::fs;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use kvs_wire::auth::{check_user_name, user_line, Role, Verifier, COST_DEFAULT};

/// The lines of the users file, or none if it does not exist yet.
fn read_lines(path: &Path) -> Result<Vec<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(String::from).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Whether a line is `name`'s.
fn is_user(line: &str, name: &str) -> bool {
    line.split_whitespace().next() == Some(name)
}

/// Writes the file whole: beside it first, fsynced, then renamed over it.
fn write_lines(path: &Path, lines: &[String]) -> Result<(), String> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = Path::new(&temporary);
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", temporary.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(temporary)
        .map_err(failed)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    for line in lines {
        writeln!(file, "{line}").map_err(failed)?;
    }
    file.sync_all().map_err(failed)?;
    fs::rename(temporary, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// The password: typed without echo on a terminal, else stdin's first line.
fn read_password(name: &str) -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {name}: "))
            .map_err(|e| format!("cannot read the password: {e}"))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

fn run(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(message) => {
            eprintln!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvs: {e}");
            ExitCode::from(2)
        }
    }
}

/// `kvs user add`: adds the user, or gives an existing one a new password and role.
pub fn add(file: &str, name: &str, role: &str) -> ExitCode {
    run((|| {
        check_user_name(name).map_err(|e| e.0)?;
        let role = Role::parse(role)
            .ok_or_else(|| format!("unknown role {role:?}: read, readwrite or admin"))?;
        let path = Path::new(file);
        let mut lines = read_lines(path)?;
        let password = read_password(name)?;
        let verifier = Verifier::new(password.as_bytes(), COST_DEFAULT).map_err(|e| e.0)?;
        let line = user_line(name, role, &verifier);
        let existed = match lines.iter_mut().find(|l| is_user(l, name)) {
            Some(old) => {
                *old = line;
                true
            }
            None => {
                lines.push(line);
                false
            }
        };
        write_lines(path, &lines)?;
        let what = if existed { "updated" } else { "added" };
        Ok(format!(
            "{what} user {name} ({role}) in {file}; send kvsd SIGHUP to read it"
        ))
    })())
}

/// `kvs user remove`: exit code 1 when the user is not in the file.
pub fn remove(file: &str, name: &str) -> ExitCode {
    let path = Path::new(file);
    let lines = match read_lines(path) {
        Ok(lines) => lines,
        Err(e) => return run(Err(e)),
    };
    let kept: Vec<String> = lines
        .iter()
        .filter(|l| !is_user(l, name))
        .cloned()
        .collect();
    if kept.len() == lines.len() {
        eprintln!("kvs: no user {name} in {file}");
        return ExitCode::from(1);
    }
    run(write_lines(path, &kept)
        .map(|()| format!("removed user {name} from {file}; send kvsd SIGHUP to read it")))
}
