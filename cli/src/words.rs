//! Cutting a batch or shell line into words. A line has no shell to quote it, so the rules
//! that let arguments hold spaces live here: the last argument of a key-value command is
//! the rest of the line, and a document command's JSON values and quoted words are whole.

/// One word of a command, from the command line or cut from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// Never read as an option (`--limit`): a quoted word, a JSON value, or a word of a
    /// key-value line, whose keys and values are bytes that may start with `--`.
    pub literal: bool,
}

impl Word {
    /// A word an option may be read from.
    pub fn plain(text: impl Into<String>) -> Word {
        Word {
            text: text.into(),
            literal: false,
        }
    }

    pub fn literal(text: impl Into<String>) -> Word {
        Word {
            text: text.into(),
            literal: true,
        }
    }
}

/// How the words after a command's name are cut from a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// At whitespace.
    Whitespace,
    /// At whitespace, except that a JSON object, array or string is one word whatever
    /// spaces it holds; a string stands for its text (`drop "my coll"`).
    Json,
    /// `before` words cut at whitespace, then the rest of the line as one word, so a value
    /// may hold spaces. All are literal. After other words the rest is kept byte for byte
    /// from just after the whitespace character that ends them (a value); as the only word
    /// it is trimmed (a key).
    Rest { before: usize },
    /// A key, as the rest of the line trimmed (literal), after any of `switches` at its
    /// start. The one exception to "a key is literal": a key that itself begins with one of
    /// the switches and a space is read with `--` in one-shot mode.
    Key { switches: &'static [&'static str] },
}

/// The first word of `text` and what follows it (from the whitespace that ends the word).
pub fn next_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    text.split_at(text.find(char::is_whitespace).unwrap_or(text.len()))
}

/// Cuts `text`, the part of a line after the command's name, into words. Fails only on
/// malformed JSON.
pub fn split(text: &str, how: Split) -> Result<Vec<Word>, String> {
    match how {
        Split::Whitespace => Ok(text.split_whitespace().map(Word::plain).collect()),
        Split::Json => split_json(text),
        Split::Rest { before } => Ok(split_rest(text, before)),
        Split::Key { switches } => {
            let mut words = Vec::new();
            let mut rest = text;
            loop {
                let (word, after) = next_word(rest);
                if !after.is_empty() && switches.contains(&word) {
                    words.push(Word::plain(word));
                    rest = after;
                } else {
                    break;
                }
            }
            words.extend(split_rest(rest, 0));
            Ok(words)
        }
    }
}

fn split_rest(text: &str, before: usize) -> Vec<Word> {
    if before == 0 {
        let key = text.trim();
        return if key.is_empty() {
            Vec::new()
        } else {
            vec![Word::literal(key)]
        };
    }
    let mut words = Vec::with_capacity(before + 1);
    let mut rest = text;
    for _ in 0..before {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            return words;
        }
        match trimmed.split_once(char::is_whitespace) {
            Some((word, after)) => {
                words.push(Word::literal(word));
                rest = after;
            }
            // No whitespace after the word: the rest is missing, not empty.
            None => {
                words.push(Word::literal(trimmed));
                return words;
            }
        }
    }
    words.push(Word::literal(rest));
    words
}

fn split_json(text: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.starts_with(['{', '[', '"']) {
            let mut values =
                serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let end = values.byte_offset();
                    // A quoted word is its text; objects and arrays stay JSON text.
                    words.push(Word::literal(match value {
                        serde_json::Value::String(text) => text,
                        _ => rest[..end].to_string(),
                    }));
                    rest = rest[end..].trim_start();
                }
                Some(Err(e)) => return Err(format!("malformed JSON: {e}")),
                None => break,
            }
        } else {
            let (word, after) = next_word(rest);
            words.push(Word::plain(word));
            rest = after.trim_start();
        }
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(words: Vec<Word>) -> Vec<String> {
        words.into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn the_rest_of_the_line_is_the_last_word() {
        let put = Split::Rest { before: 1 };
        assert_eq!(
            texts(split(" k hello  world ", put).unwrap()),
            ["k", "hello  world "]
        );
        assert_eq!(texts(split(" k  v", put).unwrap()), ["k", " v"]);
        assert_eq!(texts(split(" k ", put).unwrap()), ["k", ""]);
        assert_eq!(texts(split(" k", put).unwrap()), ["k"]);
        let cas = Split::Rest { before: 2 };
        assert_eq!(texts(split(" k  3 v 2", cas).unwrap()), ["k", "3", "v 2"]);
        let get = Split::Rest { before: 0 };
        assert_eq!(texts(split("  a key ", get).unwrap()), ["a key"]);
        assert!(split("  ", get).unwrap().is_empty());
        assert!(split(" --k -- v", put).unwrap().iter().all(|w| w.literal));
        let get = Split::Key {
            switches: &["--version"],
        };
        assert_eq!(
            split(" --version  a key", get).unwrap(),
            [Word::plain("--version"), Word::literal("a key")]
        );
        assert_eq!(
            split("--version", get).unwrap(),
            [Word::literal("--version")]
        );
        assert_eq!(
            split("--versions x", get).unwrap(),
            [Word::literal("--versions x")]
        );
    }

    #[test]
    fn json_values_and_quoted_words_are_whole() {
        let words = split(r#" "my coll" {"a": [1, 2]}--limit 3 [ ]"#, Split::Json).unwrap();
        assert_eq!(
            words,
            [
                Word::literal("my coll"),
                Word::literal(r#"{"a": [1, 2]}"#),
                Word::plain("--limit"),
                Word::plain("3"),
                Word::literal("[ ]"),
            ]
        );
        assert!(split(r#"c {"a": "#, Split::Json)
            .unwrap_err()
            .starts_with("malformed JSON"));
    }

    #[test]
    fn whitespace_words_may_be_options() {
        assert_eq!(
            split(" --start a  --limit 5\t", Split::Whitespace).unwrap(),
            [
                Word::plain("--start"),
                Word::plain("a"),
                Word::plain("--limit"),
                Word::plain("5")
            ]
        );
    }
}
