//! DBN files (plain or zstd, DBN versions 1-3) of schema trades, tbbo, mbp-1 or mbo.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dbn::decode::{DbnMetadata, DecodeRecordRef, DynDecoder};
use dbn::{Record, Schema, TsSymbolMap, VersionUpgradePolicy};
use tokio::sync::mpsc;

use crate::error::FeederError;
use crate::identity::{Changes, Identity};
use crate::sink::Staged;
use crate::source::official::{OfficialEncoder, OfficialSummary, OFFICIAL_SCHEMA};
use crate::source::{RowEncoder, Summary};
use crate::trade::RecordKind;

/// Schemas whose records can carry trade events.
const TRADE_SCHEMAS: [Schema; 4] = [Schema::Trades, Schema::Tbbo, Schema::Mbp1, Schema::Mbo];

/// What a file's metadata says, checked.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    /// The time range its records were requested for, `[from, to)` in ns (`to` None: open).
    pub from: i64,
    pub to: Option<i64>,
    /// Databento's official minute bars, not trades.
    pub official: bool,
}

/// Counts the bytes read, for progress.
struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The DBN decoder takes an early end of input for the end of the data. A zstd stream that
/// stops inside a frame is a truncated file, so that end is made an error it reports.
struct StrictEof<R>(R);

impl<R: Read> Read for StrictEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::InvalidData, "the zstd stream is truncated")
            } else {
                e
            }
        })
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// "DBN", a version byte, and the metadata's length as u32 little-endian.
const DBN_PREFIX_LEN: u64 = 8;

/// A file being decoded: the decoder, the bytes it has taken, and the metadata's length.
struct Reading {
    decoder: DynDecoder<'static, io::BufReader<CountingReader<Box<dyn Read + Send>>>>,
    delivered: Arc<AtomicU64>,
    metadata_len: u64,
}

#[derive(Clone)]
pub struct DbnFile {
    pub path: PathBuf,
    pub bytes_read: Arc<AtomicU64>,
    pub size: u64,
}

impl DbnFile {
    pub fn open(path: &Path) -> Result<Self, FeederError> {
        let size = std::fs::metadata(path)
            .map_err(|e| FeederError::io(path, e))?
            .len();
        if size == 0 {
            return Err(FeederError::Decode {
                file: path.to_path_buf(),
                msg: "the file is empty".into(),
                source: None,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            bytes_read: Arc::new(AtomicU64::new(0)),
            size,
        })
    }

    /// Decodes the whole file, sending staging rows in COPY format (no header or trailer)
    /// of the trades `identity` does not know yet. Runs on a blocking thread. An error is
    /// sent down the channel too, so the writer aborts its COPY and nothing of this file is
    /// committed.
    pub fn decode_into(
        &self,
        identity: Identity,
        pieces: Option<u64>,
        tx: mpsc::Sender<Result<Staged, FeederError>>,
    ) -> Option<(Summary, Changes)> {
        self.bytes_read.store(0, Ordering::Relaxed); // a second reading starts over
        match self.decode(identity, pieces, &tx) {
            Ok(done) => Some(done),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                None
            }
        }
    }

    fn decode_err(&self, e: impl std::fmt::Display) -> FeederError {
        FeederError::Decode {
            file: self.path.clone(),
            msg: e.to_string(),
            source: None,
        }
    }

    fn dbn_err(&self, e: dbn::Error) -> FeederError {
        FeederError::dbn(&self.path, e)
    }

    /// The file's DBN bytes, decompressed if it is zstd; `consumed` counts the raw bytes.
    fn dbn_stream(&self, consumed: Arc<AtomicU64>) -> Result<Box<dyn Read + Send>, FeederError> {
        let mut file = File::open(&self.path).map_err(|e| FeederError::io(&self.path, e))?;
        let mut magic = [0u8; 4];
        let n = file
            .read(&mut magic)
            .map_err(|e| FeederError::io(&self.path, e))?;
        let raw = io::Cursor::new(magic[..n].to_vec()).chain(file);
        let counted = CountingReader {
            inner: raw,
            read: consumed,
        };
        if magic == ZSTD_MAGIC {
            let z = zstd::stream::read::Decoder::new(counted)
                .map_err(|e| FeederError::io(&self.path, e))?;
            Ok(Box::new(StrictEof(z)))
        } else if magic.starts_with(b"DBN") {
            Ok(Box::new(counted))
        } else {
            Err(self.decode_err("neither DBN nor zstd-compressed DBN"))
        }
    }

    /// How long the metadata section is: the decoder's byte count must end exactly after the
    /// metadata and whole records, or the file stops inside a record.
    fn metadata_len(&self) -> Result<u64, FeederError> {
        self.read_metadata_len(&mut self.dbn_stream(Arc::new(AtomicU64::new(0)))?)
    }

    /// Reads the DBN prefix from the start of `stream`: the metadata section's whole length.
    fn read_metadata_len(&self, stream: &mut impl Read) -> Result<u64, FeederError> {
        let mut prefix = [0u8; DBN_PREFIX_LEN as usize];
        stream.read_exact(&mut prefix).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                self.decode_err("the file is truncated: it ends inside its DBN header")
            }
            _ => self.decode_err(format!("reading the DBN header: {e}")),
        })?;
        let len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        Ok(DBN_PREFIX_LEN + u64::from(len))
    }

    /// `official`: the file is read as official bars, not trades.
    fn check_schema(&self, metadata: &dbn::Metadata, official: bool) -> Result<(), FeederError> {
        match metadata.schema {
            Some(OFFICIAL_SCHEMA) if official => Ok(()),
            Some(schema) if official || !TRADE_SCHEMAS.contains(&schema) => {
                Err(FeederError::Schema {
                    file: self.path.clone(),
                    schema: schema.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The metadata section must be whole before dbn decodes it: dbn's decoder panics on a
    /// file that ends inside it (dbn 0.73: "entered unreachable code").
    fn require_whole_metadata(&self) -> Result<(), FeederError> {
        let mut stream = self.dbn_stream(Arc::new(AtomicU64::new(0)))?;
        let want = self.read_metadata_len(&mut stream)?;
        let rest = io::copy(&mut stream.take(want - DBN_PREFIX_LEN), &mut io::sink())
            .map_err(|e| self.decode_err(format!("reading the DBN header: {e}")))?;
        let got = DBN_PREFIX_LEN + rest;
        if got < want {
            return Err(self.decode_err(format!(
                "the file is truncated: it ends inside its metadata ({got} of {want} bytes)"
            )));
        }
        Ok(())
    }

    fn metadata(&self) -> Result<dbn::Metadata, FeederError> {
        self.require_whole_metadata()?;
        let decoder = DynDecoder::with_buffer(
            io::BufReader::new(self.dbn_stream(Arc::new(AtomicU64::new(0)))?),
            dbn::Compression::None,
            VersionUpgradePolicy::UpgradeToV3,
        )
        .map_err(|e| self.dbn_err(e))?;
        Ok(decoder.metadata().clone())
    }

    /// Reads only the metadata: is this a DBN file of trades, or of official minute bars?
    pub fn check(&self) -> Result<Checked, FeederError> {
        let metadata = self.metadata()?;
        let official = metadata.schema == Some(OFFICIAL_SCHEMA);
        self.check_schema(&metadata, official)?;
        let start = i64::try_from(metadata.start).unwrap_or(0);
        let end = metadata
            .end
            .and_then(|e| i64::try_from(e.get()).ok())
            .filter(|e| *e > start);
        Ok(Checked {
            from: start,
            to: end,
            official,
        })
    }

    fn decode(
        &self,
        identity: Identity,
        pieces: Option<u64>,
        tx: &mpsc::Sender<Result<Staged, FeederError>>,
    ) -> Result<(Summary, Changes), FeederError> {
        let mut reading = self.read_records()?;
        let decoder = &mut reading.decoder;
        let mut record_bytes = 0u64;
        let metadata = decoder.metadata().clone();
        self.check_schema(&metadata, false)?;
        let mut symbols = TsSymbolMap::from_metadata(&metadata).map_err(|e| self.dbn_err(e))?;
        let mut rows = RowEncoder::new(identity);
        while let Some(rec) = decoder.decode_record_ref().map_err(|e| self.dbn_err(e))? {
            self.check_record(&rec, record_bytes)?;
            record_bytes += rec.record_size() as u64;
            let kind = rows
                .push(&rec, &symbols)
                .map_err(|e| self.identity_err(e))?;
            if kind == Some(RecordKind::SymbolMapping) {
                symbols.on_record(rec).map_err(|e| self.dbn_err(e))?;
            }
            let Some(chunk) = rows.full_chunk() else {
                continue;
            };
            let mut sent = vec![Staged::Rows(chunk)];
            if let Some(size) = pieces {
                sent.extend(self.piece_end(&mut rows, size)?);
            }
            if sent.into_iter().any(|m| tx.blocking_send(Ok(m)).is_err()) {
                return Ok((rows.summary, Changes::default())); // the writer stopped; it reports why
            }
        }
        self.check_whole(&reading, record_bytes)?;
        let (rest, summary, changes) = rows.finish(&symbols).map_err(|e| self.identity_err(e))?;
        if let Some(chunk) = rest {
            let _ = tx.blocking_send(Ok(Staged::Rows(chunk)));
        }
        Ok((summary, changes))
    }

    /// A record that cannot be read is an error naming where it starts (after the metadata).
    fn check_record(&self, rec: &dbn::RecordRef, offset: u64) -> Result<(), FeederError> {
        match crate::trade::malformed(rec) {
            Some(why) => {
                Err(self.decode_err(format!("corrupt at byte {offset} of its records: {why}")))
            }
            None => Ok(()),
        }
    }

    /// The end of a piece of `size` trades, when one is reached: its last rows, then the end.
    fn piece_end(&self, rows: &mut RowEncoder, size: u64) -> Result<Vec<Staged>, FeederError> {
        let Some((last_rows, changes)) = rows.piece_end(size).map_err(|e| self.identity_err(e))?
        else {
            return Ok(Vec::new());
        };
        Ok(last_rows
            .map(Staged::Rows)
            .into_iter()
            .chain([Staged::PieceEnd(changes)])
            .collect())
    }

    /// Decodes an official bars file, sending `official_bars_staging` rows in COPY format (no
    /// header or trailer) down `tx`; an error is sent too, so the writer aborts its COPY.
    pub fn decode_official_into(
        &self,
        tx: mpsc::Sender<Result<Bytes, FeederError>>,
    ) -> Option<OfficialSummary> {
        self.bytes_read.store(0, Ordering::Relaxed);
        match self.decode_official(&tx) {
            Ok(done) => Some(done),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                None
            }
        }
    }

    fn decode_official(
        &self,
        tx: &mpsc::Sender<Result<Bytes, FeederError>>,
    ) -> Result<OfficialSummary, FeederError> {
        let mut reading = self.read_records()?;
        let decoder = &mut reading.decoder;
        let metadata = decoder.metadata().clone();
        self.check_schema(&metadata, true)?;
        let mut symbols = TsSymbolMap::from_metadata(&metadata).map_err(|e| self.dbn_err(e))?;
        let (mut bars, mut record_bytes) = (OfficialEncoder::default(), 0u64);
        while let Some(rec) = decoder.decode_record_ref().map_err(|e| self.dbn_err(e))? {
            self.check_record(&rec, record_bytes)?;
            record_bytes += rec.record_size() as u64;
            bars.push(&rec, &mut symbols)
                .map_err(|msg| self.decode_err(msg))?;
            if let Some(chunk) = bars.full_chunk() {
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return Ok(bars.summary); // the writer stopped; it reports why
                }
            }
        }
        self.check_whole(&reading, record_bytes)?;
        let (rest, summary) = bars.finish();
        if let Some(chunk) = rest {
            let _ = tx.blocking_send(Ok(chunk));
        }
        Ok(summary)
    }

    /// A decoder over the file's records, counting the bytes it takes.
    fn read_records(&self) -> Result<Reading, FeederError> {
        let metadata_len = self.metadata_len()?;
        let delivered = Arc::new(AtomicU64::new(0));
        let reader = CountingReader {
            inner: self.dbn_stream(self.bytes_read.clone())?,
            read: delivered.clone(),
        };
        let decoder = DynDecoder::with_buffer(
            io::BufReader::new(reader),
            dbn::Compression::None,
            VersionUpgradePolicy::UpgradeToV3,
        )
        .map_err(|e| self.dbn_err(e))?;
        Ok(Reading {
            decoder,
            delivered,
            metadata_len,
        })
    }

    /// The decoder's bytes must end exactly after the metadata and whole records, or the
    /// file stops inside a record.
    fn check_whole(&self, reading: &Reading, record_bytes: u64) -> Result<(), FeederError> {
        let read = reading.delivered.load(Ordering::Relaxed);
        let whole = reading.metadata_len + record_bytes;
        if read != whole {
            return Err(self.decode_err(format!(
                "the file is truncated: it ends inside a record ({} bytes after the last whole record)",
                read.saturating_sub(whole)
            )));
        }
        Ok(())
    }

    fn identity_err(&self, e: crate::identity::IdentityError) -> FeederError {
        FeederError::identity(self.path.display().to_string(), e)
    }
}
