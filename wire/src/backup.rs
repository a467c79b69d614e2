//! The files of a backup (`kvs backup`; docs/backup-format.md): the manifest's name and
//! format, and the check that a backup directory is whole, shared by `kvs backup verify` and
//! `kvsd --restore-from`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use serde_json::Value;

/// The manifest's name; its presence marks a finished backup.
pub const MANIFEST: &str = "MANIFEST.json";
/// The format the manifest names.
pub const FORMAT: &str = "kvs-backup 1";

/// A file's length and CRC32C.
pub fn file_crc(path: &Path) -> io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        len += n as u64;
    }
}

/// Reads a backup's manifest and checks every shard file's size and CRC32C against it.
/// Returns the manifest and the problems found, each naming its file (none: the backup is
/// whole). Err only when the directory cannot be read at all.
pub fn verify(dir: &Path) -> io::Result<(Option<Value>, Vec<String>)> {
    let path = dir.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((
                None,
                vec![format!(
                    "{}: missing: the backup did not finish (or this is not a backup)",
                    path.display()
                )],
            ))
        }
        Err(e) => return Err(e),
    };
    let manifest: Value = match serde_json::from_str(&text) {
        Ok(manifest) => manifest,
        Err(e) => {
            return Ok((
                None,
                vec![format!("{}: not a manifest: {e}", path.display())],
            ))
        }
    };
    let mut problems = Vec::new();
    if manifest["format"] != FORMAT {
        problems.push(format!(
            "{}: format {} (expected {FORMAT:?})",
            path.display(),
            manifest["format"]
        ));
        return Ok((None, problems));
    }
    let shards = manifest["shards"].as_u64().unwrap_or(0);
    let files = manifest["files"].as_array().cloned().unwrap_or_default();
    if files.len() as u64 != shards || shards == 0 {
        problems.push(format!(
            "{}: {} shard files listed for {shards} shards",
            path.display(),
            files.len()
        ));
    }
    for (at, entry) in files.iter().enumerate() {
        let name = entry["file"].as_str().unwrap_or_default();
        if entry["shard"].as_u64() != Some(at as u64) || name != format!("shard-{at:03}.pages") {
            problems.push(format!(
                "{}: entry {at} is not shard {at}'s file",
                path.display()
            ));
            continue;
        }
        let file = dir.join(name);
        match file_crc(&file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                problems.push(format!("{}: missing", file.display()))
            }
            Err(e) => problems.push(format!("{}: {e}", file.display())),
            Ok((bytes, crc)) => {
                if Some(bytes) != entry["bytes"].as_u64() {
                    problems.push(format!(
                        "{}: {bytes} bytes, the manifest says {}",
                        file.display(),
                        entry["bytes"]
                    ));
                } else if entry["crc32c"].as_str() != Some(&format!("{crc:08x}")) {
                    problems.push(format!(
                        "{}: damaged: CRC32C {crc:08x}, the manifest says {}",
                        file.display(),
                        entry["crc32c"]
                    ));
                }
            }
        }
    }
    Ok((Some(manifest), problems))
}

/// `unix_ms` as RFC 3339 in UTC with milliseconds (`2026-12-05T08:10:45.123Z`): the time a
/// manifest records, and what `kvsd --restore-from ... --until` reads.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let (secs, millis) = ((unix_ms / 1000) as i64, unix_ms % 1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
