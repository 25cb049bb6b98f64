//! The line `coremq` prints on stdout once every shard recovered its storage
//! and listens (broker/src/main.rs writes it):
//!
//! ```text
//! coremq listening on 127.0.0.1:9092 shards=2 shard_ports=9093,9094
//! ```
//!
//! Tools that start a broker (on `--listen HOST:0`, so it picks free ports
//! itself) read its addresses from this line.

use std::net::SocketAddr;

const PREFIX: &str = "coremq listening on ";

/// What the ready line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyLine {
    /// The port every shard accepts on.
    pub main_address: SocketAddr,
    /// Each shard's own port, in shard order.
    pub shard_ports: Vec<u16>,
}

impl ReadyLine {
    /// Parses one line of the broker's stdout; `None` unless it is the ready line.
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let mut fields = line.strip_prefix(PREFIX)?.split_whitespace();
        let main_address = fields.next()?.parse().ok()?;
        let shard_ports = fields
            .find_map(|f| f.strip_prefix("shard_ports="))?
            .split(',')
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u16>>>()?;
        Some(ReadyLine {
            main_address,
            shard_ports,
        })
    }

    /// Reads the first line of a broker's stdout, which must be the ready
    /// line (`coremq` prints nothing else there): `UnexpectedEof` if the
    /// broker exited first, `InvalidData` for any other line.
    pub fn read(stdout: impl std::io::Read) -> std::io::Result<ReadyLine> {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the broker exited before it listened",
            ));
        }
        ReadyLine::parse(&line).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected broker output: {line:?}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_line_and_nothing_else() {
        let line =
            ReadyLine::parse("coremq listening on 127.0.0.1:9092 shards=2 shard_ports=9093,9094\n")
                .expect("ready line");
        assert_eq!(line.main_address, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(line.shard_ports, vec![9093, 9094]);
        assert_eq!(ReadyLine::parse("coremq starting"), None);
        assert_eq!(
            ReadyLine::parse("coremq listening on nowhere shards=1 shard_ports=1"),
            None
        );
        assert_eq!(
            ReadyLine::parse("coremq listening on 127.0.0.1:1 shards=1 shard_ports=x"),
            None
        );
    }

    #[test]
    fn reads_only_the_first_line() {
        let out = "coremq listening on 127.0.0.1:9 shards=1 shard_ports=10\nlater\n";
        assert_eq!(
            ReadyLine::read(out.as_bytes()).unwrap().shard_ports,
            vec![10]
        );
        let error = ReadyLine::read("Error: no\n".as_bytes()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        let error = ReadyLine::read("".as_bytes()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
