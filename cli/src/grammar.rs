//! The one grammar of `kvs`: every command with its arguments, options and how a line
//! is cut into its words, in one table that the parser, the help and every mode read. Keeping
//! one table is what makes a command mean the same in one-shot, batch and shell mode.

use serde_json::Value as Json;

use crate::words::Split;

/// The data directory `kvs verify` checks unless `--data-dir` says otherwise.
pub const DATA_DIR_DEFAULT: &str = "./kvs-data";

/// A parsed command: arguments are checked (numbers are numbers, JSON is JSON), so what is
/// left to go wrong is the server's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Ping,
    ClusterStatus,
    /// `cluster transfer-leader SHARD NODE`.
    TransferLeader {
        shard: u32,
        node: u64,
    },
    Get {
        key: String,
        /// Print the key's version before its value (for `cas`).
        version: bool,
        /// Answered from the asked node's own replica, without asking the shard's leader.
        stale: bool,
    },
    Put {
        key: String,
        value: String,
    },
    Del {
        key: String,
    },
    Cas {
        key: String,
        version: u64,
        value: String,
    },
    Scan {
        start: Option<String>,
        end: Option<String>,
        /// Most pairs; all of them when absent.
        limit: Option<u64>,
    },
    Info,
    Insert {
        coll: String,
        /// A document, or an array of them.
        documents: Json,
    },
    Find {
        coll: String,
        filter: Option<Json>,
        sort: Option<Json>,
        skip: Option<u64>,
        limit: Option<u64>,
        projection: Option<Json>,
    },
    Update {
        coll: String,
        filter: Json,
        update: Json,
        upsert: bool,
        many: bool,
    },
    Remove {
        coll: String,
        filter: Json,
        one: bool,
    },
    Count {
        coll: String,
        filter: Option<Json>,
    },
    Aggregate {
        coll: String,
        pipeline: Json,
    },
    IndexCreate {
        coll: String,
        /// The key document (`{"a": 1, "b": -1}`), also when given as `a,-b`.
        key: Json,
        unique: bool,
        name: Option<String>,
    },
    IndexDrop {
        coll: String,
        name: String,
    },
    IndexList {
        coll: String,
    },
    Explain {
        coll: String,
        filter: Option<Json>,
        sort: Option<Json>,
        limit: Option<u64>,
    },
    Collections,
    Drop {
        coll: String,
    },
    Verify {
        data_dir: String,
    },
    /// `dump --to FILE`: everything the node holds, to a file.
    Dump {
        to: String,
    },
    /// `load FILE`: a dump into the node.
    Load {
        from: String,
    },
    /// `backup --to DIR`: every shard's checkpoint, streamed to DIR.
    Backup {
        to: String,
    },
    /// `backup verify DIR`: checks a backup against its manifest.
    /// `user add`: a user of a users file (ADR 0025).
    UserAdd {
        file: String,
        name: String,
        role: String,
    },
    UserRemove {
        file: String,
        name: String,
    },
    BackupVerify {
        dir: String,
    },
    /// `txn [--isolation LEVEL]`: commands from stdin run as one transaction.
    Txn {
        isolation: kvs_wire::Isolation,
    },
}

/// One row of the grammar.
pub struct Spec {
    /// One word, or two (`index create`).
    pub name: &'static str,
    /// Positional arguments in order; optional ones are in brackets and come last.
    pub args: &'static [&'static str],
    pub options: &'static [Opt],
    /// How a batch or shell line is cut into words after the name.
    pub split: Split,
    pub about: &'static str,
    build: fn(&mut Matched) -> Result<Command, String>,
}

/// An option: `--name VALUE`, or a switch when it takes no value.
pub struct Opt {
    pub name: &'static str,
    pub value: Option<&'static str>,
    pub about: &'static str,
}

impl Spec {
    /// The command that arguments and options sorted out for this row make: `args` by
    /// position (the required ones all present), `options` by position in `options` (a
    /// switch that was given holds an empty string). Fails when one does not convert.
    pub fn build(
        &'static self,
        args: Vec<Option<String>>,
        options: Vec<Option<String>>,
    ) -> Result<Command, String> {
        (self.build)(&mut Matched {
            spec: self,
            args,
            options,
        })
    }

    /// `find COLL [FILTER] [--sort JSON] ...`
    pub fn usage(&self) -> String {
        let mut usage = self.name.to_string();
        for arg in self.args {
            usage.push(' ');
            usage.push_str(arg);
        }
        for option in self.options {
            match option.value {
                Some(value) => usage.push_str(&format!(" [{} {value}]", option.name)),
                None => usage.push_str(&format!(" [{}]", option.name)),
            }
        }
        usage
    }
}

const fn opt(name: &'static str, value: &'static str, about: &'static str) -> Opt {
    Opt {
        name,
        value: Some(value),
        about,
    }
}

const fn switch(name: &'static str, about: &'static str) -> Opt {
    Opt {
        name,
        value: None,
        about,
    }
}

/// Key-value commands take words as they are (keys and values are bytes); document
/// commands take JSON values whole.
pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "ping",
        args: &[],
        options: &[],
        split: Split::Whitespace,
        about: "Checks the server answers: prints PONG.",
        build: |_| Ok(Command::Ping),
    },
    Spec {
        name: "get",
        args: &["KEY"],
        options: &[
            switch(
                "--version",
                "print VERSION<TAB>VALUE: the version is what cas expects",
            ),
            switch(
                "--stale",
                "in a cluster, read the asked node's own replica without asking the shard's \
                 leader (may miss acknowledged writes; works without a majority)",
            ),
        ],
        split: Split::Key {
            switches: &["--version", "--stale"],
        },
        about: "Prints the value of KEY; a missing key prints (nil) (one-shot: on stderr, exit code 1).",
        build: |m| {
            Ok(Command::Get {
                version: m.switch("--version"),
                stale: m.switch("--stale"),
                key: m.arg(0),
            })
        },
    },
    Spec {
        name: "put",
        args: &["KEY", "VALUE"],
        options: &[],
        split: Split::Rest { before: 1 },
        about: "Stores VALUE under KEY; prints OK once the write is durable.",
        build: |m| {
            Ok(Command::Put {
                key: m.arg(0),
                value: m.arg(1),
            })
        },
    },
    Spec {
        name: "del",
        args: &["KEY"],
        options: &[],
        split: Split::Rest { before: 0 },
        about: "Deletes KEY: prints OK, or (nil) when it did not exist (one-shot: exit code 1).",
        build: |m| Ok(Command::Del { key: m.arg(0) }),
    },
    Spec {
        name: "cas",
        args: &["KEY", "VERSION", "VALUE"],
        options: &[],
        split: Split::Rest { before: 2 },
        about: "Writes VALUE only if KEY's version is VERSION (0: KEY must not exist); \
                prints the new version.",
        build: |m| {
            Ok(Command::Cas {
                key: m.arg(0),
                version: number("version", &m.arg(1))?,
                value: m.arg(2),
            })
        },
    },
    Spec {
        name: "scan",
        args: &[],
        options: &[
            opt("--start", "KEY", "first key (inclusive)"),
            opt("--end", "KEY", "end key (exclusive)"),
            opt("--limit", "N", "most pairs (all when absent)"),
        ],
        split: Split::Whitespace,
        about: "Lists pairs in key order: one KEY<TAB>VALUE line each (batch mode: a JSON \
                array of [KEY, VALUE] pairs).",
        build: |m| {
            Ok(Command::Scan {
                start: m.option("--start"),
                end: m.option("--end"),
                limit: m.number("--limit")?,
            })
        },
    },
    Spec {
        name: "info",
        args: &[],
        options: &[],
        split: Split::Whitespace,
        about: "Prints server information as JSON: version, shards, per-shard keys, log size, \
                last index.",
        build: |_| Ok(Command::Info),
    },
    Spec {
        name: "cluster status",
        args: &[],
        options: &[],
        split: Split::Whitespace,
        about: "Prints the cluster as this node sees it, as JSON: its id, every node (addresses, \
                reachable, last heard) and every shard (leader or null, term, commit index, \
                replicas).",
        build: |_| Ok(Command::ClusterStatus),
    },
    Spec {
        name: "cluster transfer-leader",
        args: &["SHARD", "NODE"],
        options: &[],
        split: Split::Whitespace,
        about: "Makes NODE the leader of SHARD: records NODE as the shard's preferred leader \
                (replicated, so it lasts), waits up to 10 s for the leadership to move there \
                and prints OK.",
        build: |m| {
            Ok(Command::TransferLeader {
                shard: u32::try_from(number("shard", &m.arg(0))?)
                    .map_err(|_| "shard: too large".to_string())?,
                node: number("node", &m.arg(1))?,
            })
        },
    },
    Spec {
        name: "insert",
        args: &["COLL", "JSON"],
        options: &[],
        split: Split::Json,
        about: "Inserts a document, or an array of documents, into COLL; prints each _id.",
        build: |m| {
            Ok(Command::Insert {
                coll: m.arg(0),
                documents: json("the document", &m.arg(1))?,
            })
        },
    },
    Spec {
        name: "find",
        args: &["COLL", "[FILTER]"],
        options: &[
            opt("--sort", "JSON", "sort document, such as '{\"name\": 1}'"),
            opt("--skip", "N", "documents to skip first"),
            opt("--limit", "N", "most documents"),
            opt(
                "--projection",
                "JSON",
                "projection document, such as '{\"name\": 1, \"_id\": 0}'",
            ),
        ],
        split: Split::Json,
        about: "Prints the documents of COLL that FILTER matches, one JSON document per line \
                (batch mode: a JSON array).",
        build: |m| {
            Ok(Command::Find {
                coll: m.arg(0),
                filter: m.json_arg(1, "the filter")?,
                sort: m.json("--sort", "the sort")?,
                skip: m.number("--skip")?,
                limit: m.number("--limit")?,
                projection: m.json("--projection", "the projection")?,
            })
        },
    },
    Spec {
        name: "update",
        args: &["COLL", "FILTER", "UPDATE"],
        options: &[
            switch("--upsert", "insert a document when none matches"),
            switch("--many", "update every document FILTER matches"),
        ],
        split: Split::Json,
        about: "Updates the first document FILTER matches (every one with --many); prints \
                {\"matched\":N,\"modified\":M}.",
        build: |m| {
            Ok(Command::Update {
                coll: m.arg(0),
                filter: json("the filter", &m.arg(1))?,
                update: json("the update", &m.arg(2))?,
                upsert: m.switch("--upsert"),
                many: m.switch("--many"),
            })
        },
    },
    Spec {
        name: "remove",
        args: &["COLL", "FILTER"],
        options: &[switch("--one", "remove only the first document FILTER matches")],
        split: Split::Json,
        about: "Removes the documents FILTER matches; prints {\"deleted\":N}.",
        build: |m| {
            Ok(Command::Remove {
                coll: m.arg(0),
                filter: json("the filter", &m.arg(1))?,
                one: m.switch("--one"),
            })
        },
    },
    Spec {
        name: "count",
        args: &["COLL", "[FILTER]"],
        options: &[],
        split: Split::Json,
        about: "Prints how many documents of COLL FILTER matches.",
        build: |m| {
            Ok(Command::Count {
                coll: m.arg(0),
                filter: m.json_arg(1, "the filter")?,
            })
        },
    },
    Spec {
        name: "aggregate",
        args: &["COLL", "PIPELINE"],
        options: &[],
        split: Split::Json,
        about: "Runs an aggregation PIPELINE (a JSON array); prints one document per line \
                (batch mode: a JSON array).",
        build: |m| {
            Ok(Command::Aggregate {
                coll: m.arg(0),
                pipeline: json("the pipeline", &m.arg(1))?,
            })
        },
    },
    Spec {
        name: "index create",
        args: &["COLL", "KEY"],
        options: &[
            switch("--unique", "refuse two documents with the same key"),
            opt("--name", "NAME", "the index's name (from its key when absent)"),
        ],
        split: Split::Json,
        about: "Creates an index on KEY (a field, 'a,-b' for a compound one with b \
                descending, or a JSON key document) and waits until it is built; prints its \
                name.",
        build: |m| {
            Ok(Command::IndexCreate {
                coll: m.arg(0),
                key: index_key(&m.arg(1))?,
                unique: m.switch("--unique"),
                name: m.option("--name"),
            })
        },
    },
    Spec {
        name: "index drop",
        args: &["COLL", "NAME"],
        options: &[],
        split: Split::Json,
        about: "Drops the index NAME of COLL; prints OK.",
        build: |m| {
            Ok(Command::IndexDrop {
                coll: m.arg(0),
                name: m.arg(1),
            })
        },
    },
    Spec {
        name: "index list",
        args: &["COLL"],
        options: &[],
        split: Split::Json,
        about: "Lists the indexes of COLL, one JSON document per line (batch mode: a JSON array).",
        build: |m| Ok(Command::IndexList { coll: m.arg(0) }),
    },
    Spec {
        name: "explain",
        args: &["COLL", "[FILTER]"],
        options: &[
            opt("--sort", "JSON", "sort document"),
            opt("--limit", "N", "most documents"),
        ],
        split: Split::Json,
        about: "Prints how each shard would run a query, and what it examined.",
        build: |m| {
            Ok(Command::Explain {
                coll: m.arg(0),
                filter: m.json_arg(1, "the filter")?,
                sort: m.json("--sort", "the sort")?,
                limit: m.number("--limit")?,
            })
        },
    },
    Spec {
        name: "collections",
        args: &[],
        options: &[],
        split: Split::Json,
        about: "Lists the collections, one name per line (batch mode: a JSON array).",
        build: |_| Ok(Command::Collections),
    },
    Spec {
        name: "drop",
        args: &["COLL"],
        options: &[],
        split: Split::Json,
        about: "Drops COLL with its documents and indexes: prints OK, or (nil) when there is \
                no such collection (one-shot: exit code 1).",
        build: |m| Ok(Command::Drop { coll: m.arg(0) }),
    },
    Spec {
        name: "verify",
        args: &[],
        options: &[opt("--data-dir", "DIR", "the data directory (./kvs-data)")],
        split: Split::Whitespace,
        about: "Checks a stopped node's data directory (pages, tree, free list, and documents \
                against their indexes) by running kvsd --verify; exit code 0 clean, 1 \
                problems found. Only as a one-shot command.",
        build: |m| {
            Ok(Command::Verify {
                data_dir: m
                    .option("--data-dir")
                    .unwrap_or_else(|| DATA_DIR_DEFAULT.to_string()),
            })
        },
    },
    Spec {
        name: "dump",
        args: &[],
        options: &[opt("--to", "FILE", "the file to write (required)")],
        split: Split::Whitespace,
        about: "Writes every key-value pair, collection, document and index definition the \
                node holds to FILE: binary-safe, checksummed, streamed (docs/dump-format.md). \
                Only as a one-shot command.",
        build: |m| match m.option("--to") {
            Some(to) => Ok(Command::Dump { to }),
            None => Err("dump needs --to FILE".into()),
        },
    },
    Spec {
        name: "load",
        args: &["FILE"],
        options: &[],
        split: Split::Whitespace,
        about: "Loads a dump into the node, whatever its shard count: pairs overwrite keys it \
                has; collections, documents and indexes are created. Only as a one-shot \
                command.",
        build: |m| Ok(Command::Load { from: m.arg(0) }),
    },
    Spec {
        name: "backup",
        args: &[],
        options: &[opt("--to", "DIR", "a new directory for the backup (required)")],
        split: Split::Whitespace,
        about: "Backs up the node while it serves: every shard's checkpoint (in a cluster, \
                from the shard's leader), streamed to DIR on this machine with a manifest of \
                CRC32Cs; restore with kvsd --restore-from DIR (docs/operations.md). Only as a \
                one-shot command.",
        build: |m| match m.option("--to") {
            Some(to) => Ok(Command::Backup { to }),
            None => Err("backup needs --to DIR".into()),
        },
    },
    Spec {
        name: "txn",
        args: &[],
        options: &[opt(
            "--isolation",
            "LEVEL",
            "read-committed, serializable (the default) or read-only (one snapshot, no locks, no writes)",
        )],
        split: Split::Whitespace,
        about: "Runs the commands read from stdin, one per line (get, put, del, cas, scan, \
                insert, find, update, remove, count, aggregate), as one transaction, until a line says commit or rollback; prints each result, \
                then COMMITTED or why not (docs/transactions.md). Exit code 0 only if \
                committed. Only as a one-shot command.",
        build: |m| {
            let isolation = match m.option("--isolation").as_deref() {
                None => kvs_wire::Isolation::Serializable,
                Some(text) => kvs_wire::Isolation::parse(text).ok_or_else(|| {
                    format!("--isolation takes read-committed, serializable or read-only, not {text}")
                })?,
            };
            Ok(Command::Txn { isolation })
        },
    },
    Spec {
        name: "backup verify",
        args: &["DIR"],
        options: &[],
        split: Split::Whitespace,
        about: "Checks a backup: its manifest, and every shard file's size and CRC32C; exit \
                code 0 whole, 1 problems found (one line each). Needs no server. Only as a \
                one-shot command.",
        build: |m| Ok(Command::BackupVerify { dir: m.arg(0) }),
    },
    Spec {
        name: "user add",
        args: &["NAME", "ROLE"],
        options: &[opt("--file", "FILE", "the users file kvsd reads (required)")],
        split: Split::Whitespace,
        about: "Adds user NAME with ROLE (read, readwrite or admin) to the users file kvsd \
                reads with --users-file, or gives an existing one a new password and role; \
                the password is read from the terminal (or stdin's first line) and only its \
                salted argon2id verifier is written (docs/security.md). Needs no server; \
                send kvsd SIGHUP to read the file. Only as a one-shot command.",
        build: |m| match m.option("--file") {
            Some(file) => Ok(Command::UserAdd {
                file,
                name: m.arg(0),
                role: m.arg(1),
            }),
            None => Err("user add needs --file FILE".into()),
        },
    },
    Spec {
        name: "user remove",
        args: &["NAME"],
        options: &[opt("--file", "FILE", "the users file kvsd reads (required)")],
        split: Split::Whitespace,
        about: "Removes user NAME from the users file; exit code 1 if it is not there. Needs \
                no server; send kvsd SIGHUP to read the file. Only as a one-shot command.",
        build: |m| match m.option("--file") {
            Some(file) => Ok(Command::UserRemove {
                file,
                name: m.arg(0),
            }),
            None => Err("user remove needs --file FILE".into()),
        },
    },
];

/// The usages of the commands `topic` names: one, a group (`index`), or all ("").
pub fn usages(topic: &str) -> Vec<String> {
    topics(topic).map(Spec::usage).collect()
}

/// The rows `topic` names: one command, a group (`index`), or all ("").
pub fn topics(topic: &str) -> impl Iterator<Item = &'static Spec> + '_ {
    COMMANDS.iter().filter(move |s| {
        topic.is_empty()
            || s.name.eq_ignore_ascii_case(topic)
            || s.name
                .split_once(' ')
                .is_some_and(|(group, _)| group.eq_ignore_ascii_case(topic))
    })
}

/// The words a command line gave for one row, for its `build` to take.
struct Matched {
    spec: &'static Spec,
    args: Vec<Option<String>>,
    /// A switch that was given holds an empty string.
    options: Vec<Option<String>>,
}

impl Matched {
    /// A required argument; `match_words` counted them.
    fn arg(&mut self, at: usize) -> String {
        self.args
            .get_mut(at)
            .and_then(Option::take)
            .expect("required arguments are counted before build")
    }

    fn json_arg(&mut self, at: usize, what: &str) -> Result<Option<Json>, String> {
        match self.args.get_mut(at).and_then(Option::take) {
            Some(text) => json(what, &text).map(Some),
            None => Ok(None),
        }
    }

    fn at(&self, name: &str) -> usize {
        self.spec
            .options
            .iter()
            .position(|o| o.name == name)
            .expect("build names only the options of its own row")
    }

    fn option(&mut self, name: &str) -> Option<String> {
        let at = self.at(name);
        self.options[at].take()
    }

    fn switch(&mut self, name: &str) -> bool {
        self.option(name).is_some()
    }

    fn number(&mut self, name: &str) -> Result<Option<u64>, String> {
        self.option(name)
            .map(|text| number(name.trim_start_matches('-'), &text))
            .transpose()
    }

    fn json(&mut self, name: &str, what: &str) -> Result<Option<Json>, String> {
        self.option(name).map(|text| json(what, &text)).transpose()
    }
}

fn number(what: &str, text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("bad {what} {text:?}"))
}

fn json(what: &str, text: &str) -> Result<Json, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

/// An index key: a JSON document, or fields separated by commas ('-' before a field:
/// descending).
fn index_key(text: &str) -> Result<Json, String> {
    if text.trim_start().starts_with('{') {
        return json("the index key", text);
    }
    let mut key = serde_json::Map::new();
    for field in text.split(',').map(str::trim) {
        let (name, direction) = match field.strip_prefix('-') {
            Some(name) => (name, -1),
            None => (field.strip_prefix('+').unwrap_or(field), 1),
        };
        if name.is_empty() {
            return Err(format!("bad index key {text:?}"));
        }
        key.insert(name.to_string(), serde_json::json!(direction));
    }
    Ok(Json::Object(key))
}
