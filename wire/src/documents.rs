//! The document commands' client side (`docs/documents.md`), shared by a connection
//! (`Client`) and a transaction (`Transaction`): each helper builds its command, runs it
//! through `call` (one DOCUMENT request, on its own or inside the transaction) and reads the
//! reply.

use serde_json::{json, Value as JsonValue};

/// A reply that is not what its command returns (the caller's error type takes it in).
#[derive(Debug)]
pub struct ReplyError(pub String);

/// Runs one document command and returns its reply.
pub type Call<'a, E> = dyn Fn(&JsonValue) -> Result<JsonValue, E> + 'a;

fn count_field<E: From<ReplyError>>(reply: &JsonValue, name: &str) -> Result<u64, E> {
    reply[name]
        .as_u64()
        .ok_or_else(|| ReplyError(format!("reply without {name}: {reply}")).into())
}

pub fn insert<E: From<ReplyError>>(
    call: &Call<E>,
    coll: &str,
    docs: &[JsonValue],
) -> Result<Vec<JsonValue>, E> {
    let reply = call(&json!({"insert": coll, "documents": docs}))?;
    match reply["insertedIds"].as_array() {
        Some(ids) => Ok(ids.clone()),
        None => Err(E::from(ReplyError(format!("insert reply {reply}")))),
    }
}

pub fn find_each<E: From<ReplyError>>(
    call: &Call<E>,
    coll: &str,
    query: &JsonValue,
    mut each: impl FnMut(JsonValue) -> Result<(), E>,
) -> Result<(), E> {
    let mut command = json!({"find": coll});
    if let (Some(fields), Some(options)) = (command.as_object_mut(), query.as_object()) {
        for (k, v) in options {
            fields.insert(k.clone(), v.clone());
        }
    }
    loop {
        let mut reply = call(&command)?;
        let docs = match reply["documents"].take() {
            JsonValue::Array(docs) => docs,
            _ => return Err(E::from(ReplyError(format!("find reply {reply}")))),
        };
        for doc in docs {
            each(doc)?;
        }
        match reply.get("cursor") {
            Some(cursor) if !cursor.is_null() => command["cursor"] = cursor.clone(),
            _ => return Ok(()),
        }
    }
}

pub fn count<E: From<ReplyError>>(
    call: &Call<E>,
    coll: &str,
    filter: &JsonValue,
) -> Result<u64, E> {
    let reply = call(&json!({"count": coll, "filter": filter}))?;
    count_field(&reply, "count")
}

pub fn update_command(
    coll: &str,
    filter: &JsonValue,
    update: &JsonValue,
    upsert: bool,
    multi: bool,
) -> JsonValue {
    json!({"update": coll, "filter": filter, "u": update, "upsert": upsert, "multi": multi})
}

pub fn remove<E: From<ReplyError>>(
    call: &Call<E>,
    coll: &str,
    filter: &JsonValue,
    multi: bool,
) -> Result<u64, E> {
    let reply = call(&json!({"delete": coll, "filter": filter, "multi": multi}))?;
    count_field(&reply, "deleted")
}

pub fn aggregate<E: From<ReplyError>>(
    call: &Call<E>,
    coll: &str,
    pipeline: &JsonValue,
) -> Result<Vec<JsonValue>, E> {
    let mut reply = call(&json!({"aggregate": coll, "pipeline": pipeline}))?;
    match reply["documents"].take() {
        JsonValue::Array(docs) => Ok(docs),
        _ => Err(E::from(ReplyError(format!("aggregate reply {reply}")))),
    }
}
