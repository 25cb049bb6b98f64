//! The data directory's manifest: what shape of broker wrote it.
//!
//! Partitions are placed on shards by `shard_for(topic, partition,
//! shard_count)`, so a data directory is only meaningful to a broker with
//! the shard count that wrote it: another count would move partitions to
//! shards whose logs do not hold them and hand out their offsets again.
//! The manifest (`<data-dir>/MANIFEST`) records the shard count and the
//! storage format version when the directory is created; start-up refuses
//! a mismatch with a message that says what the directory holds.
//!
//! The file is a few `key = value` lines (human readable; `cat` it), the
//! last of which is a CRC of the lines before it. It is written once, as
//! `MANIFEST.tmp` → fsync → rename → directory fsync.
//!
//! Runs once at start-up, before any shard starts, with `std::fs` (no shard
//! thread exists yet).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "MANIFEST";
const MANIFEST_TMP_FILE: &str = "MANIFEST.tmp";
/// Storage format version this build writes and reads (docs/storage.md).
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LINE: &str = "# CoreMQ data directory: do not edit (docs/storage.md, \"Manifest\")";

/// What a data directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    pub shard_count: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "data directory {dir} holds {found} shards (its {MANIFEST_FILE} says so), but this broker \
         was started with {wanted}: partitions are placed by shard count, so another count would \
         move them and reuse their offsets. Start with --shards {found} (the default follows the \
         number of cores), or use a new --data-dir"
    )]
    ShardCount {
        dir: String,
        found: u16,
        wanted: u16,
    },
    #[error(
        "data directory {dir} holds shard directories {found} but no {MANIFEST_FILE} (written by \
         a CoreMQ before manifests, or not by CoreMQ); it looks like {count} shards: start with \
         --shards {count} to adopt it, or use a new --data-dir"
    )]
    UnknownShape {
        dir: String,
        found: String,
        count: u16,
    },
    #[error(
        "data directory {dir} has storage format version {found}; this build reads version \
         {FORMAT_VERSION}: use the CoreMQ release that wrote it"
    )]
    FormatVersion { dir: String, found: u32 },
    #[error("{path} is damaged or not a CoreMQ manifest ({reason}); it is left untouched")]
    Unreadable { path: String, reason: String },
    #[error("i/o error while {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl Manifest {
    pub fn encode(&self) -> String {
        let body = format!(
            "{HEADER_LINE}\nformat_version = {}\nshard_count = {}\n",
            self.format_version, self.shard_count
        );
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}crc = {crc:08x}\n")
    }

    pub fn decode(text: &str) -> Result<Manifest, String> {
        let crc_at = text
            .rfind("crc = ")
            .ok_or_else(|| "no crc line".to_string())?;
        let (body, crc_line) = text.split_at(crc_at);
        let stored = u32::from_str_radix(crc_line.trim_start_matches("crc = ").trim(), 16)
            .map_err(|_| "unreadable crc line".to_string())?;
        let computed = crc32fast::hash(body.as_bytes());
        if stored != computed {
            return Err(format!(
                "crc mismatch: stored {stored:08x}, computed {computed:08x}"
            ));
        }
        let mut format_version = None;
        let mut shard_count = None;
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line
                .split_once(" = ")
                .ok_or_else(|| format!("not a `key = value` line: {line:?}"))?;
            match key {
                "format_version" => format_version = value.parse().ok(),
                "shard_count" => shard_count = value.parse().ok(),
                _ => {} // Added by a later version; ignored by this one.
            }
        }
        match (format_version, shard_count) {
            (Some(format_version), Some(shard_count)) if shard_count > 0 => Ok(Manifest {
                format_version,
                shard_count,
            }),
            _ => Err("format_version or shard_count missing or invalid".to_string()),
        }
    }
}

/// Checks `dir` against a broker of `shard_count` shards, writing the
/// manifest if the directory is new. Returns `true` if it was new.
pub fn open_or_create(dir: &Path, shard_count: u16) -> Result<bool, ManifestError> {
    let shown = dir.display().to_string();
    let path = dir.join(MANIFEST_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let unreadable = |reason: String| ManifestError::Unreadable {
                path: path.display().to_string(),
                reason,
            };
            let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8".into()))?;
            let manifest = Manifest::decode(&text).map_err(unreadable)?;
            if manifest.format_version != FORMAT_VERSION {
                return Err(ManifestError::FormatVersion {
                    dir: shown,
                    found: manifest.format_version,
                });
            }
            if manifest.shard_count != shard_count {
                return Err(ManifestError::ShardCount {
                    dir: shown,
                    found: manifest.shard_count,
                    wanted: shard_count,
                });
            }
            return Ok(false);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ManifestError::Io {
                op: "reading",
                path: path.display().to_string(),
                source,
            })
        }
    }
    let shards = shard_dirs(dir)?;
    if !shards.is_empty() {
        // A directory from before manifests: adopt it only if its shape is
        // the one asked for (shard-0 .. shard-(n-1), nothing else).
        let count = shards.len() as u16;
        let dense = shards.iter().enumerate().all(|(i, s)| *s == i as u64);
        if !dense || count != shard_count {
            let found = shards
                .iter()
                .map(|s| format!("shard-{s}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ManifestError::UnknownShape {
                dir: shown,
                found,
                count: shards.len() as u16,
            });
        }
        tracing::info!(dir = %shown, shard_count, "adopting a data directory without a manifest");
    }
    write(
        dir,
        &Manifest {
            format_version: FORMAT_VERSION,
            shard_count,
        },
    )?;
    Ok(shards.is_empty())
}

/// Indexes of the `shard-<i>` directories in `dir`, sorted.
fn shard_dirs(dir: &Path) -> Result<Vec<u64>, ManifestError> {
    let io = |source| ManifestError::Io {
        op: "listing",
        path: dir.display().to_string(),
        source,
    };
    let mut shards = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if let Some(i) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            shards.push(i);
        }
    }
    shards.sort_unstable();
    Ok(shards)
}

fn write(dir: &Path, manifest: &Manifest) -> Result<(), ManifestError> {
    let tmp: PathBuf = dir.join(MANIFEST_TMP_FILE);
    let io = |op, path: &Path| {
        let path = path.display().to_string();
        move |source| ManifestError::Io { op, path, source }
    };
    let mut file = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(manifest.encode().as_bytes())
        .map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    drop(file);
    let path = dir.join(MANIFEST_FILE);
    fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let m = Manifest {
            format_version: 1,
            shard_count: 3,
        };
        let text = m.encode();
        assert_eq!(Manifest::decode(&text), Ok(m));
        let damaged = text.replace("shard_count = 3", "shard_count = 4");
        assert!(Manifest::decode(&damaged).unwrap_err().contains("crc"));
        assert!(Manifest::decode("").is_err());
    }

    #[test]
    fn new_directory_gets_a_manifest_and_a_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(open_or_create(dir.path(), 2).expect("new"));
        assert!(!open_or_create(dir.path(), 2).expect("same shape"));
        let error = open_or_create(dir.path(), 4).expect_err("another shard count");
        let message = error.to_string();
        assert!(matches!(
            error,
            ManifestError::ShardCount {
                found: 2,
                wanted: 4,
                ..
            }
        ));
        assert!(message.contains("--shards 2"), "{message}");
    }

    #[test]
    fn directory_from_before_manifests_is_adopted_only_with_its_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..2 {
            fs::create_dir(dir.path().join(format!("shard-{i}"))).expect("mkdir");
        }
        let error = open_or_create(dir.path(), 3).expect_err("3 shards on 2");
        assert!(error.to_string().contains("--shards 2"), "{error}");
        assert!(!dir.path().join(MANIFEST_FILE).exists());
        assert!(!open_or_create(dir.path(), 2).expect("adopted"));
        assert!(dir.path().join(MANIFEST_FILE).exists());
    }

    #[test]
    fn other_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let newer = Manifest {
            format_version: FORMAT_VERSION + 1,
            shard_count: 1,
        };
        fs::write(dir.path().join(MANIFEST_FILE), newer.encode()).expect("write");
        assert!(matches!(
            open_or_create(dir.path(), 1),
            Err(ManifestError::FormatVersion { .. })
        ));
    }
}
