//! How results are printed: line by line as they come (one-shot and shell), or gathered
//! into exactly one line per command (batch mode, where each input line gets one output
//! line). Commands hand their results over through [`Output`] and never format them.

use std::fmt;
use std::io::{self, Write};

use serde_json::Value as Json;

/// What a command prints for a key, collection or value that does not exist.
pub const MISSING: &str = "(nil)";

/// An error as one line.
pub fn error_line(error: &impl fmt::Display) -> String {
    format!("ERR {}", error.to_string().replace('\n', " "))
}

/// Where a command's results go.
pub trait Output {
    /// A result that is one line in every mode: OK, PONG, a version, a count, a JSON reply.
    fn line(&mut self, text: &str) -> io::Result<()>;
    /// A stored value, bytes as they are.
    fn value(&mut self, value: &[u8]) -> io::Result<()>;
    /// A list of results follows (perhaps none): pairs, documents, ids, names.
    fn begin_list(&mut self) -> io::Result<()>;
    fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()>;
    /// A JSON item of a list: a document, an `_id`, an index.
    fn item(&mut self, item: Json) -> io::Result<()>;
    /// A name in a list, such as a collection's.
    fn name(&mut self, name: &str) -> io::Result<()>;
}

/// Prints each result on lines of its own as it comes, so a long result streams: a list
/// is one line per item, a pair `KEY<TAB>VALUE`, a value its bytes.
pub struct Lines<W: Write>(pub W);

impl<W: Write> Output for Lines<W> {
    fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.0, "{text}")
    }

    fn value(&mut self, value: &[u8]) -> io::Result<()> {
        self.0.write_all(value)?;
        self.0.write_all(b"\n")
    }

    fn begin_list(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.0.write_all(key)?;
        self.0.write_all(b"\t")?;
        self.0.write_all(value)?;
        self.0.write_all(b"\n")
    }

    fn item(&mut self, item: Json) -> io::Result<()> {
        writeln!(self.0, "{item}")
    }

    fn name(&mut self, name: &str) -> io::Result<()> {
        writeln!(self.0, "{name}")
    }
}

/// Gathers a command's results into one line: a list becomes a JSON array (a pair
/// `[KEY, VALUE]`, a name a JSON string), a value its text.
#[derive(Default)]
pub struct OneLine {
    line: Option<String>,
    list: Option<Vec<Json>>,
}

impl OneLine {
    /// The line, once the command is done.
    pub fn into_line(self) -> String {
        match (self.list, self.line) {
            (Some(list), _) => Json::Array(list).to_string(),
            (None, Some(line)) => line,
            (None, None) => String::new(),
        }
    }

    fn push(&mut self, item: Json) {
        self.list.get_or_insert_with(Vec::new).push(item);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Output for OneLine {
    fn line(&mut self, text: &str) -> io::Result<()> {
        self.line = Some(text.to_string());
        Ok(())
    }

    fn value(&mut self, value: &[u8]) -> io::Result<()> {
        self.line = Some(text(value));
        Ok(())
    }

    fn begin_list(&mut self) -> io::Result<()> {
        self.list.get_or_insert_with(Vec::new);
        Ok(())
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.push(Json::Array(vec![
            Json::String(text(key)),
            Json::String(text(value)),
        ]));
        Ok(())
    }

    fn item(&mut self, item: Json) -> io::Result<()> {
        self.push(item);
        Ok(())
    }

    fn name(&mut self, name: &str) -> io::Result<()> {
        self.push(Json::String(name.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The same results, printed both ways.
    fn both(results: impl Fn(&mut dyn Output) -> io::Result<()>) -> (String, String) {
        let mut lines = Lines(Vec::new());
        results(&mut lines).unwrap();
        let mut one = OneLine::default();
        results(&mut one).unwrap();
        (String::from_utf8(lines.0).unwrap(), one.into_line())
    }

    #[test]
    fn lists_are_lines_or_one_json_array() {
        assert_eq!(
            both(|out| {
                out.begin_list()?;
                out.pair(b"a", b"1 2")?;
                out.pair(b"b", b"")
            }),
            ("a\t1 2\nb\t\n".into(), r#"[["a","1 2"],["b",""]]"#.into())
        );
        assert_eq!(
            both(|out| {
                out.begin_list()?;
                out.item(json!({"_id": 1}))?;
                out.item(json!("x"))
            }),
            ("{\"_id\":1}\n\"x\"\n".into(), r#"[{"_id":1},"x"]"#.into())
        );
        assert_eq!(
            both(|out| {
                out.begin_list()?;
                out.name("my coll")
            }),
            ("my coll\n".into(), r#"["my coll"]"#.into())
        );
        assert_eq!(both(|out| out.begin_list()), (String::new(), "[]".into()));
    }

    #[test]
    fn lines_and_values() {
        assert_eq!(both(|out| out.line("OK")), ("OK\n".into(), "OK".into()));
        assert_eq!(
            both(|out| out.value(b"hello world")),
            ("hello world\n".into(), "hello world".into())
        );
        assert_eq!(error_line(&"two\nlines"), "ERR two lines");
    }
}
