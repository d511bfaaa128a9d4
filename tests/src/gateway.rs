//! A loopback stand-in for Databento's live gateway that speaks its raw protocol: greeting,
//! CRAM challenge and the auth reply (checking the key's SHA-256 response), subscription
//! lines with an optional replay `start`, `start_session`, then a DBN stream (metadata, symbol
//! mappings, trades in `ts_recv` order, heartbeats) and disconnects at chosen points.
//! The trades come from a DBN file, so a test can compare the bars with `oracle(file)`.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbn::decode::{DbnMetadata, DecodeRecordRef, DynDecoder};
use dbn::encode::dbn::{MetadataEncoder, RecordEncoder};
use dbn::encode::EncodeRecord;
use dbn::{Metadata, SType, Schema, SymbolMappingMsg, SystemMsg, TradeMsg, VersionUpgradePolicy};
use sha2::{Digest, Sha256};

const CHALLENGE: &str = "t7kNhwj4xqR0QYjzFKtBEG2ec2pXJ4FK";

/// How the gateway behaves.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The key it accepts.
    key: String,
    /// Connection i is cut after sending `cuts[i]` trades; connections past the list are not.
    cuts: Vec<usize>,
    /// Pause this long after every 1,000 trades (a paced stream).
    pace: Option<Duration>,
    /// A subscription without replay starts at the live edge, as Databento's does: past
    /// every trade an earlier connection was sent, and this many more that happened while
    /// nobody listened. `None`: from the first trade.
    missed_while_away: Option<usize>,
}

impl Plan {
    /// Accepts `key`, never cuts, never pauses.
    pub fn new(key: &str) -> Plan {
        Plan {
            key: key.into(),
            ..Plan::default()
        }
    }

    pub fn cut_after(mut self, cuts: Vec<usize>) -> Plan {
        self.cuts = cuts;
        self
    }

    pub fn paced(mut self, pause_per_1000: Duration) -> Plan {
        self.pace = Some(pause_per_1000);
        self
    }

    pub fn live_edge(mut self, missed_while_away: usize) -> Plan {
        self.missed_while_away = Some(missed_while_away);
        self
    }
}

pub struct FakeGateway {
    pub addr: String,
    pub connections: Arc<AtomicUsize>,
    /// When the last trade of the file was sent (on any connection).
    pub all_sent_at: Arc<Mutex<Option<Instant>>>,
    /// On a paced stream: (trades sent so far, when), after every 1,000 trades.
    pub sent_marks: Arc<Mutex<Vec<(usize, Instant)>>>,
    /// Trades sent over every connection, replays included.
    pub trades_sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wakes the accept loop
    }
}

struct Feed {
    dataset: String,
    mappings: Vec<SymbolMappingMsg>,
    trades: Vec<TradeMsg>,
}

fn load(file: &Path) -> Feed {
    let mut decoder =
        DynDecoder::from_file(file, VersionUpgradePolicy::UpgradeToV3).expect("decoding the feed");
    let metadata = decoder.metadata().clone();
    let mut trades = Vec::new();
    while let Some(rec) = decoder.decode_record_ref().expect("record") {
        if let Some(t) = rec.get::<TradeMsg>() {
            trades.push(t.clone());
        }
    }
    // A live stream is in order of receipt.
    trades.sort_by_key(|t| t.ts_recv);
    let mappings = metadata
        .mappings
        .iter()
        .flat_map(|m| {
            m.intervals.iter().map(|i| {
                let id: u32 = i.symbol.parse().expect("instrument id");
                SymbolMappingMsg::new(
                    id,
                    0,
                    SType::RawSymbol,
                    &m.raw_symbol,
                    SType::RawSymbol,
                    &m.raw_symbol,
                    0,
                    u64::MAX,
                )
                .expect("symbol mapping")
            })
        })
        .collect();
    Feed {
        dataset: metadata.dataset,
        mappings,
        trades,
    }
}

fn expected_auth(key: &str) -> String {
    let digest = Sha256::digest(format!("{CHALLENGE}|{key}").as_bytes());
    format!(
        "{}-{}",
        hex::encode(digest),
        &key[key.len().saturating_sub(5)..]
    )
}

impl FakeGateway {
    /// `tradebars-feeder live` (the binary `bin`) subscribed to every symbol through this
    /// gateway, feeding the database at `database_url` with `key`.
    pub fn feeder_command(
        &self,
        bin: &Path,
        database_url: &str,
        key: &str,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "live",
            "--dataset",
            "XNAS.ITCH",
            "--all-symbols",
            "--gateway",
            &self.addr,
        ])
        .env("DATABASE_URL", database_url)
        .env("DATABENTO_API_KEY", key);
        cmd
    }

    /// `tradebars-feeder live` through this gateway with the tests' batch and rollup
    /// intervals, its output piped; `extra` flags come last.
    pub fn spawn_feeder(&self, db: &str, key: &str, extra: &[&str]) -> std::process::Child {
        self.feeder_command(&crate::feeder_bin(), &crate::url(db), key)
            .args(["--batch-ms", "50", "--rollup-ms", "200"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting the live feeder")
    }

    pub fn start(file: &Path, plan: Plan) -> FakeGateway {
        Self::start_at("127.0.0.1:0", file, plan)
    }

    /// A gateway on `addr`: "127.0.0.1:0" for any port, or the address of a gateway dropped
    /// before, to bring it back (tried for up to 10 s while the old one lets the port go).
    pub fn start_at(addr: &str, file: &Path, plan: Plan) -> FakeGateway {
        let feed = Arc::new(load(file));
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("binding the fake gateway to {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let all_sent_at = Arc::new(Mutex::new(None));
        let sent_marks = Arc::new(Mutex::new(Vec::new()));
        let edge = Arc::new(AtomicUsize::new(0));
        let trades_sent = Arc::new(AtomicUsize::new(0));
        let total = trades_sent.clone();
        let (s, c, a, m) = (
            stop.clone(),
            connections.clone(),
            all_sent_at.clone(),
            sent_marks.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let n = c.fetch_add(1, Ordering::SeqCst);
                let (feed, plan, stop) = (feed.clone(), plan.clone(), s.clone());
                let (all_at, marks, edge) = (a.clone(), m.clone(), edge.clone());
                let total = total.clone();
                std::thread::spawn(move || {
                    let sent = Sent {
                        all_at: &all_at,
                        marks: &marks,
                        edge: &edge,
                        total: &total,
                    };
                    let _ = serve(stream, &feed, &plan, plan.cuts.get(n).copied(), &stop, sent);
                });
            }
        });
        FakeGateway {
            addr,
            connections,
            all_sent_at,
            sent_marks,
            trades_sent,
            stop,
        }
    }
}

/// Where a connection records when it sent what.
struct Sent<'a> {
    all_at: &'a Mutex<Option<Instant>>,
    marks: &'a Mutex<Vec<(usize, Instant)>>,
    /// Past the last trade sent on any connection.
    edge: &'a AtomicUsize,
    total: &'a AtomicUsize,
}

fn serve(
    stream: TcpStream,
    feed: &Feed,
    plan: &Plan,
    cut: Option<usize>,
    stop: &AtomicBool,
    record: Sent<'_>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = BufWriter::new(stream.try_clone()?);
    if !authenticate(&mut reader, &mut out, &plan.key)? {
        return stream.shutdown(Shutdown::Both);
    }
    let Some(start) = read_subscription(&mut reader)? else {
        return Ok(());
    };
    let enc = |e: dbn::Error| std::io::Error::other(e.to_string());
    let mut records = begin_session(&mut out, feed, start)?;
    if !send_trades(&mut records, feed, plan, cut, stop, &record, start)? {
        return stream.shutdown(Shutdown::Both);
    }
    if let Ok(mut at) = record.all_at.lock() {
        at.get_or_insert_with(Instant::now);
    }
    // Heartbeats carry the gateway's time, as Databento's do: here just past the last trade.
    let now = feed.trades.last().map_or(0, |t| t.ts_recv + 1_000_000_000);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
        records
            .encode_record(&SystemMsg::heartbeat(now))
            .map_err(enc)?;
        records.flush().map_err(enc)?;
    }
    Ok(())
}

/// The CRAM exchange: the greeting and challenge, the client's answer, success or failure.
/// Whether the client knew `key`.
fn authenticate(
    reader: &mut BufReader<TcpStream>,
    out: &mut BufWriter<TcpStream>,
    key: &str,
) -> std::io::Result<bool> {
    write!(out, "lsg_version=0.1.0\ncram={CHALLENGE}\n")?;
    out.flush()?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let auth = line
        .trim_end()
        .split('|')
        .find_map(|kv| kv.strip_prefix("auth="))
        .unwrap_or("");
    if auth != expected_auth(key) {
        writeln!(out, "success=0|error=Authentication failed.")?;
        out.flush()?;
        return Ok(false);
    }
    writeln!(out, "success=1|session_id=42")?;
    out.flush()?;
    Ok(true)
}

/// The subscription lines up to `start_session`: the replay start they ask for (0: none), or
/// None where the client hung up first.
fn read_subscription(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<u64>> {
    let mut start: u64 = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l == "start_session" {
            return Ok(Some(start));
        }
        if let Some(s) = l.split('|').find_map(|kv| kv.strip_prefix("start=")) {
            start = s.parse().unwrap_or(0);
        }
    }
}

/// The session's DBN metadata and symbol mappings; the encoder for what follows.
fn begin_session<'w>(
    out: &'w mut BufWriter<TcpStream>,
    feed: &Feed,
    start: u64,
) -> std::io::Result<RecordEncoder<&'w mut BufWriter<TcpStream>>> {
    let enc = |e: dbn::Error| std::io::Error::other(e.to_string());
    let metadata = Metadata::builder()
        .version(3)
        .dataset(feed.dataset.clone())
        .schema(Some(Schema::Trades))
        .start(start)
        .stype_in(Some(SType::RawSymbol))
        .stype_out(SType::InstrumentId)
        .build();
    MetadataEncoder::new(&mut *out)
        .encode(&metadata)
        .map_err(enc)?;
    let mut records = RecordEncoder::new(out);
    for m in &feed.mappings {
        records.encode_record(m).map_err(enc)?;
    }
    Ok(records)
}

/// Sends the plan's trades from `start` on (paced, if the plan says so), recording what went
/// when. False where the connection is to end here: cut by the plan, or the gateway stopped.
fn send_trades(
    records: &mut RecordEncoder<&mut BufWriter<TcpStream>>,
    feed: &Feed,
    plan: &Plan,
    cut: Option<usize>,
    stop: &AtomicBool,
    record: &Sent<'_>,
    start: u64,
) -> std::io::Result<bool> {
    let enc = |e: dbn::Error| std::io::Error::other(e.to_string());
    let mut sent = 0usize;
    let edge = record.edge.load(Ordering::SeqCst);
    let first = match plan.missed_while_away {
        Some(missed) if start == 0 && edge > 0 => edge + missed,
        _ => 0,
    };
    // Intraday replay filters on ts_event, as Databento's does.
    let from_start = |(_, t): &(usize, &TradeMsg)| t.hd.ts_event >= start;
    for (i, t) in feed
        .trades
        .iter()
        .enumerate()
        .skip(first)
        .filter(from_start)
    {
        if cut == Some(sent) {
            records.flush().map_err(enc)?;
            return Ok(false);
        }
        records.encode_record(t).map_err(enc)?;
        record.edge.fetch_max(i + 1, Ordering::SeqCst);
        record.total.fetch_add(1, Ordering::SeqCst);
        sent += 1;
        if sent.is_multiple_of(1000) {
            if let Some(pause) = plan.pace {
                records.flush().map_err(enc)?;
                if let Ok(mut marks) = record.marks.lock() {
                    marks.push((sent, Instant::now()));
                }
                std::thread::sleep(pause);
                // a stopped gateway ends its paced sessions too
                if stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
            }
        }
    }
    records.flush().map_err(enc)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::expected_auth;

    /// Databento's CRAM answer: the SHA-256 of `challenge|key` in lowercase hex, then the
    /// key's last five characters (the digest computed by sha256sum).
    #[test]
    fn the_expected_answer_is_the_hex_digest_and_the_keys_bucket() {
        assert_eq!(
            expected_auth("db-tradebarsTestKey0123456789abc"),
            "eadb146a8761034535a431e4b53c38c6e5f21b175e7664095ea29705c0a07acd-89abc"
        );
    }
}
