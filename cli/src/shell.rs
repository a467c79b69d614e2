//! The interactive shell (`kvs` on a terminal): reads a line with history, runs it as a
//! one-shot command would and prints its results the same way, but answers errors and
//! missing keys on stdout and goes on.

use std::io::Write;
use std::process::ExitCode;

use kvs_wire::Client;

use crate::execute::{self, Status};
use crate::help::help;
use crate::output::{error_line, Lines, MISSING};
use crate::parse::{self, ParseError};

pub fn run(client: &Client) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("kvs: cannot start the shell: {e}");
            return ExitCode::from(2);
        }
    };
    let history =
        std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".kvs_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "kvs shell connected to {}; 'help' lists commands, 'quit' leaves",
        client.addr()
    );
    loop {
        let line = match editor.readline(&format!("{}> ", client.addr())) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        match trimmed.split_once(' ').unwrap_or((trimmed, "")) {
            ("quit" | "exit", "") => break,
            ("help", topic) => print_help(topic),
            _ => run_line(client, &line),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    ExitCode::SUCCESS
}

fn print_help(topic: &str) {
    match help(topic, "") {
        Ok(text) => print!("{text}"),
        Err(message) => println!("{}", error_line(&message)),
    }
}

fn run_line(client: &Client, line: &str) {
    let command = match parse::parse_line(line) {
        Ok(command) => command,
        Err(ParseError::Help(topic)) => return print_help(&topic),
        Err(e) => return println!("{}", error_line(&e)),
    };
    let mut out = Lines(std::io::BufWriter::new(std::io::stdout().lock()));
    let result = execute::run(client, command, &mut out);
    let last = match result {
        Ok(Status::Done) => None,
        Ok(Status::Missing) => Some(MISSING.to_string()),
        Err(e) => Some(error_line(&e)),
    };
    if let Some(last) = last {
        let _ = writeln!(out.0, "{last}");
    }
    let _ = out.0.flush();
}
