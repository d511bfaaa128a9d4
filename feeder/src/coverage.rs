//! Trade identity in the database: reading the stretches of trades already staged
//! (`trade_coverage`) that a load may meet, and writing what it adds, in the load's own
//! transaction. The decisions themselves are in identity.rs.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{GenericClient, Transaction};

use crate::copy;
use crate::error::FeederError;
use crate::identity::{Changes, Instrument, Span, NS_PER_MINUTE};
use tradebars_contract::{internal, lock};

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
        .query_one(
            &format!("SELECT {}($1)", internal::IDENTITY_REFUSAL),
            &[&first_recv],
        )
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
    delete_merged(tx, &changes.delete).await?;
    insert_spans(tx, &changes.insert).await
}

/// Deletes the stretches `delete` names (their place and first ts_recv), in one statement.
async fn delete_merged(
    tx: &Transaction<'_>,
    delete: &[(Instrument, i64)],
) -> Result<(), FeederError> {
    if delete.is_empty() {
        return Ok(());
    }
    let publishers: Vec<i32> = delete
        .iter()
        .map(|(at, _)| i32::from(at.publisher))
        .collect();
    let instruments: Vec<i64> = delete
        .iter()
        .map(|(at, _)| i64::from(at.instrument))
        .collect();
    let firsts: Vec<i64> = delete.iter().map(|(_, first)| *first).collect();
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
    Ok(())
}

/// Writes `insert` by binary COPY, in pieces of 4096 rows.
async fn insert_spans(tx: &Transaction<'_>, insert: &[Span]) -> Result<(), FeederError> {
    if insert.is_empty() {
        return Ok(());
    }
    let failed = |e| FeederError::db("writing trade identity (trade_coverage)", e);
    let sink = tx
        .copy_in::<_, Bytes>(
            "COPY trade_coverage (publisher_id, instrument_id, minute, first_recv, last_recv, \
             trades, digest, first_group, last_group, source) FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(failed)?;
    futures_util::pin_mut!(sink);
    // In the key's order: the rows append to the primary key's index instead of landing all
    // over it.
    let mut spans: Vec<&Span> = insert.iter().collect();
    spans.sort_unstable_by_key(|s| (s.minute, s.at.publisher, s.at.instrument, s.first));
    let mut header = BytesMut::new();
    copy::encode_header(&mut header);
    let chunks = spans.chunks(4096).map(|chunk| {
        let mut buf = BytesMut::with_capacity(chunk.len() * 160);
        for span in chunk {
            encode_row(&mut buf, span);
        }
        buf
    });
    let mut trailer = BytesMut::new();
    copy::encode_trailer(&mut trailer);
    for buf in std::iter::once(header)
        .chain(chunks)
        .chain(std::iter::once(trailer))
    {
        sink.send(buf.freeze()).await.map_err(failed)?;
    }
    sink.finish().await.map_err(failed)?;
    Ok(())
}

/// One row in binary COPY format (`copy.rs` writes staging the same way): the server need
/// not parse the arrays' text, which cost about half of this COPY's time.
fn encode_row(buf: &mut BytesMut, s: &Span) {
    buf.put_i16(10); // fields
    buf.put_i32(4);
    buf.put_i32(i32::from(s.at.publisher));
    for v in [
        i64::from(s.at.instrument),
        s.minute,
        s.first,
        s.last,
        s.trades,
        s.digest,
    ] {
        buf.put_i32(8);
        buf.put_i64(v);
    }
    put_bigint_array(buf, &s.first_group);
    put_bigint_array(buf, &s.last_group);
    buf.put_i32(s.source.len() as i32);
    buf.put_slice(s.source.as_bytes());
}

/// `bigint[]` in PostgreSQL's binary array format: dimensions, no NULLs, element type int8,
/// then the elements; an empty array has no dimension.
fn put_bigint_array(buf: &mut BytesMut, v: &[i64]) {
    const INT8_OID: i32 = 20;
    let dims = i32::from(!v.is_empty());
    buf.put_i32(12 + 8 * dims + 12 * v.len() as i32);
    buf.put_i32(dims);
    buf.put_i32(0); // no NULLs
    buf.put_i32(INT8_OID);
    if dims == 1 {
        buf.put_i32(v.len() as i32);
        buf.put_i32(1); // lower bound
    }
    for x in v {
        buf.put_i32(8);
        buf.put_i64(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_row_holds_every_field_and_both_arrays() {
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
            source: "a\tb".into(),
        };
        let mut buf = BytesMut::new();
        encode_row(&mut buf, &span);
        // Written out by hand from PostgreSQL's binary COPY and array formats.
        let mut want: Vec<u8> = vec![0, 10, 0, 0, 0, 4, 0, 0, 0, 2];
        for v in [1000i64, 5, 300, 310, 3, -4] {
            want.extend([0, 0, 0, 8]);
            want.extend(v.to_be_bytes());
        }
        want.extend([
            0, 0, 0, 44, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 1,
        ]);
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend([0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.extend([0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20]);
        want.extend([0, 0, 0, 3, b'a', b'\t', b'b']);
        assert_eq!(&buf[..], &want[..]);
    }
}
