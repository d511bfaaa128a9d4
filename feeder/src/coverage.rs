//! Trade identity in the database: reading the stretches of trades already staged
//! (`trade_coverage`) that a load may meet, and writing what it adds, in the load's own
//! transaction. The decisions themselves are in identity.rs.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{GenericClient, Transaction};

use crate::error::FeederError;
use crate::identity::{Changes, Instrument, Span, NS_PER_MINUTE};
use tradebars_contract::lock;

/// Advisory lock (class, key) held by every load while it reads and extends trade identity,
/// so two loads never decide on the same stretch at once.
const IDENTITY_LOCK: (i32, i32) = (lock::CLASS, lock::IDENTITY);

/// Takes the identity lock for the rest of `tx`.
pub async fn lock(tx: &Transaction<'_>) -> Result<(), FeederError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&IDENTITY_LOCK.0, &IDENTITY_LOCK.1],
    )
    .await
    .map_err(|e| FeederError::db("waiting for another load's trade identity", e))?;
    Ok(())
}

/// Why a load whose trades start at `first_recv` (ns) must not go ahead, if it must not:
/// trade identity before the horizon is gone where trades bars exist.
pub async fn refusal(
    client: &impl GenericClient,
    first_recv: i64,
) -> Result<Option<String>, FeederError> {
    client
        .query_one("SELECT identity_refusal($1)", &[&first_recv])
        .await
        .map(|row| row.get(0))
        .map_err(|e| FeederError::db("checking the identity horizon", e))
}

/// The identity horizon in ns: before it, trade identity is no longer known.
pub async fn horizon(client: &impl GenericClient) -> Result<i64, FeederError> {
    client
        .query_one(
            "SELECT coalesce((SELECT identity_horizon FROM bar_settings), 0)",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .map_err(|e| FeederError::db("reading the identity horizon", e))
}

/// The ts_recv minutes, inclusive, that a range from `from` (ns) to `to` (ns; `None`: on)
/// touches.
pub fn minutes(from: i64, to: Option<i64>) -> (i64, i64) {
    let first = from.div_euclid(NS_PER_MINUTE);
    let last = to.map_or(i64::MAX, |t| t.div_euclid(NS_PER_MINUTE));
    (first, last)
}

/// The stored stretches of the ts_recv minutes from `from` (ns) to `to` (ns; `None`: on).
pub async fn load(
    client: &impl GenericClient,
    from: i64,
    to: Option<i64>,
) -> Result<Vec<Span>, FeederError> {
    let (first, last) = minutes(from, to);
    let rows = client
        .query(
            "SELECT publisher_id, instrument_id, minute, first_recv, last_recv, trades, digest,
                    first_group, last_group, source
             FROM trade_coverage WHERE minute BETWEEN $1 AND $2",
            &[&first, &last],
        )
        .await
        .map_err(|e| FeederError::db("reading trade identity (trade_coverage)", e))?;
    Ok(rows
        .into_iter()
        .map(|r| Span {
            at: Instrument {
                publisher: u16::try_from(r.get::<_, i32>(0)).unwrap_or(u16::MAX),
                instrument: u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
            },
            minute: r.get(2),
            first: r.get(3),
            last: r.get(4),
            trades: r.get(5),
            digest: r.get(6),
            first_group: r.get(7),
            last_group: r.get(8),
            source: r.get(9),
        })
        .collect())
}

/// Writes `changes` in `tx`: the stretches merged away go, the merged ones come.
pub async fn store(tx: &Transaction<'_>, changes: &Changes) -> Result<(), FeederError> {
    if !changes.delete.is_empty() {
        let publishers: Vec<i32> = changes
            .delete
            .iter()
            .map(|(at, _)| i32::from(at.publisher))
            .collect();
        let instruments: Vec<i64> = changes
            .delete
            .iter()
            .map(|(at, _)| i64::from(at.instrument))
            .collect();
        let firsts: Vec<i64> = changes.delete.iter().map(|(_, first)| *first).collect();
        let minutes: Vec<i64> = firsts.iter().map(|f| f.div_euclid(NS_PER_MINUTE)).collect();
        tx.execute(
            "DELETE FROM trade_coverage c
             USING unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[]) AS d(m, p, i, f)
             WHERE c.minute = d.m AND c.publisher_id = d.p AND c.instrument_id = d.i
               AND c.first_recv = d.f",
            &[&minutes, &publishers, &instruments, &firsts],
        )
        .await
        .map_err(|e| FeederError::db("updating trade identity (trade_coverage)", e))?;
    }
    if changes.insert.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in::<_, Bytes>(
            "COPY trade_coverage (publisher_id, instrument_id, minute, first_recv, last_recv, \
             trades, digest, first_group, last_group, source) FROM STDIN",
        )
        .await
        .map_err(|e| FeederError::db("writing trade identity (trade_coverage)", e))?;
    futures_util::pin_mut!(sink);
    // In the key's order: the rows append to the primary key's index instead of landing all
    // over it.
    let mut spans: Vec<&Span> = changes.insert.iter().collect();
    spans.sort_unstable_by_key(|s| (s.minute, s.at.publisher, s.at.instrument, s.first));
    for chunk in spans.chunks(4096) {
        let mut buf = BytesMut::new();
        for span in chunk {
            encode_text_row(&mut buf, span);
        }
        sink.send(buf.freeze())
            .await
            .map_err(|e| FeederError::db("writing trade identity (trade_coverage)", e))?;
    }
    sink.finish()
        .await
        .map_err(|e| FeederError::db("writing trade identity (trade_coverage)", e))?;
    Ok(())
}

/// One row in COPY's text format.
fn encode_text_row(buf: &mut BytesMut, s: &Span) {
    let array = |v: &[i64]| {
        let items: Vec<String> = v.iter().map(i64::to_string).collect();
        format!("{{{}}}", items.join(","))
    };
    let line = format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
        s.at.publisher,
        s.at.instrument,
        s.minute,
        s.first,
        s.last,
        s.trades,
        s.digest,
        array(&s.first_group),
        array(&s.last_group)
    );
    buf.put_slice(line.as_bytes());
    for c in s.source.chars() {
        match c {
            '\\' => buf.put_slice(b"\\\\"),
            '\t' => buf.put_slice(b"\\t"),
            '\n' => buf.put_slice(b"\\n"),
            '\r' => buf.put_slice(b"\\r"),
            c => {
                let mut tmp = [0u8; 4];
                buf.put_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_row_escapes_the_source_and_writes_arrays() {
        let span = Span {
            at: Instrument {
                publisher: 2,
                instrument: 1000,
            },
            minute: 5,
            first: 300,
            last: 310,
            trades: 3,
            digest: -4,
            first_group: vec![1, -2],
            last_group: vec![],
            source: "a\tb\\c\nd".into(),
        };
        let mut buf = BytesMut::new();
        encode_text_row(&mut buf, &span);
        assert_eq!(
            &buf[..],
            b"2\t1000\t5\t300\t310\t3\t-4\t{1,-2}\t{}\ta\\tb\\\\c\\nd\n"
        );
    }
}
