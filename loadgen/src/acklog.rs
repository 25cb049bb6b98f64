//! The ack log: one line per acknowledged message, `topic partition offset
//! crc32` (tab separated, crc in hex), written and flushed to the OS after each
//! acknowledged batch, so it is complete up to the moment the broker dies.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

pub struct AckLogWriter {
    out: BufWriter<File>,
    lines: u64,
}

impl AckLogWriter {
    pub fn append_to(path: &Path) -> Result<AckLogWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening ack log {}", path.display()))?;
        Ok(AckLogWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            lines: 0,
        })
    }

    /// Records one acknowledged batch: offsets `base_offset..` in order.
    pub fn record_batch(
        &mut self,
        topic: &str,
        partition: u32,
        base_offset: u64,
        crcs: &[u32],
    ) -> Result<()> {
        for (i, crc) in crcs.iter().enumerate() {
            writeln!(
                self.out,
                "{topic}\t{partition}\t{}\t{crc:08x}",
                base_offset + i as u64
            )?;
        }
        self.out.flush()?;
        self.lines += crcs.len() as u64;
        Ok(())
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }
}

/// Offset → crc32 per (topic, partition).
pub type Acked = BTreeMap<(String, u32), BTreeMap<u64, u32>>;

/// Reads an ack log. A torn last line (no newline) is ignored; any other
/// malformed line is an error.
pub fn read(path: &Path) -> Result<(Acked, u64)> {
    let file = File::open(path).with_context(|| format!("opening ack log {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut acked = Acked::new();
    let mut line = String::new();
    let mut number = 0u64;
    let mut count = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        number += 1;
        if !line.ends_with('\n') {
            tracing::warn!(line = number, "ignoring a torn last line in the ack log");
            break;
        }
        let fields: Vec<&str> = line.trim_end().split('\t').collect();
        let [topic, partition, offset, crc] = fields[..] else {
            bail!("ack log line {number}: expected 4 tab-separated fields: {line:?}");
        };
        let partition: u32 = partition
            .parse()
            .with_context(|| format!("ack log line {number}: partition"))?;
        let offset: u64 = offset
            .parse()
            .with_context(|| format!("ack log line {number}: offset"))?;
        let crc =
            u32::from_str_radix(crc, 16).with_context(|| format!("ack log line {number}: crc"))?;
        acked
            .entry((topic.to_string(), partition))
            .or_default()
            .insert(offset, crc);
        count += 1;
    }
    Ok((acked, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        let mut writer = AckLogWriter::append_to(&path).unwrap();
        writer.record_batch("t", 1, 10, &[0xdead, 0xbeef]).unwrap();
        writer.record_batch("u", 0, 0, &[1]).unwrap();
        drop(writer);
        // A torn tail, as if the writer died mid-line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"t\t1\t1")
            .unwrap();
        let (acked, count) = read(&path).unwrap();
        assert_eq!(count, 3);
        assert_eq!(acked[&("t".to_string(), 1)][&11], 0xbeef);
        assert_eq!(acked[&("u".to_string(), 0)][&0], 1);
    }
}
