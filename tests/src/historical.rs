//! A loopback stand-in for Databento's historical API: `POST /v0/timeseries.get_range` with
//! HTTP basic auth and a form (`start`, `end` in nanoseconds), answered with zstd-compressed
//! DBN holding the trades of a DBN file that fall in the range, with the file's symbology
//! (as MBP-1 trade events for schema=mbp-1); for schema=ohlcv-1m, the file's minute bars that
//! start in the range.
//! Chosen requests can fail: cut off in the middle of the body. The HTTP server is axum's.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::prelude::{Engine, BASE64_STANDARD};
use dbn::decode::{DbnMetadata, DecodeRecordRef, DynDecoder};
use dbn::encode::dbn::Encoder;
use dbn::encode::EncodeRecord;
use dbn::{
    BidAskPair, Mbp1Msg, Metadata, OhlcvMsg, RecordHeader, Schema, TradeMsg, VersionUpgradePolicy,
};

pub struct FakeHistorical {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
}

/// The `Authorization` header of HTTP basic auth with `key` as the user and no password,
/// as Databento's clients send it.
fn basic_auth(key: &str) -> String {
    format!("Basic {}", BASE64_STANDARD.encode(format!("{key}:")))
}

impl FakeHistorical {
    /// Serves `file`; requests whose number (from 0) is in `cut` are cut off mid-body.
    pub fn start(file: &Path, key: &str, cut: Vec<usize>) -> FakeHistorical {
        let mut decoder = DynDecoder::from_file(file, VersionUpgradePolicy::UpgradeToV3)
            .expect("decoding the feed");
        let mut metadata = decoder.metadata().clone();
        metadata.version = 3;
        let (mut trades, mut bars) = (Vec::new(), Vec::new());
        while let Some(rec) = decoder.decode_record_ref().expect("record") {
            if let Some(t) = rec.get::<TradeMsg>() {
                trades.push(t.clone());
            } else if let Some(b) = rec.get::<OhlcvMsg>() {
                bars.push(b.clone());
            }
        }
        let feed = Feed {
            metadata,
            trades,
            bars,
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake historical API");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(Served {
            feed,
            auth: basic_auth(key),
            cut,
            requests: requests.clone(),
        });
        std::thread::spawn(move || serve(listener, served));
        FakeHistorical { url, requests }
    }
}

/// What the fake serves: one file's records.
struct Feed {
    metadata: Metadata,
    trades: Vec<TradeMsg>,
    bars: Vec<OhlcvMsg>,
}

/// The feed, the credentials it accepts, the requests to cut, and the count of requests.
struct Served {
    feed: Feed,
    auth: String,
    cut: Vec<usize>,
    requests: Arc<AtomicUsize>,
}

/// Answers every request on `listener` with axum, on a runtime of this thread's own.
fn serve(listener: TcpListener, served: Arc<Served>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the fake historical API");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
        let app = axum::Router::new().fallback(answer).with_state(served);
        axum::serve(listener, app).await.expect("serving");
    });
}

impl FakeHistorical {
    /// Runs `tradebars-feeder backfill --rollup` of 2025-10-24 14:00 to 21:00 UTC, every
    /// symbol of XNAS.ITCH, against this API into `db`, with `key`, `schema` and `extra` args.
    pub fn backfill(&self, db: &str, key: &str, schema: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "backfill",
            "--dataset",
            "XNAS.ITCH",
            "--all-symbols",
            "--start",
            "2025-10-24T14:00:00Z",
            "--end",
            "2025-10-24T21:00:00Z",
            "--historical-url",
            &self.url,
            "--rollup",
            "--schema",
            schema,
        ];
        args.extend_from_slice(extra);
        Command::new(crate::feeder_bin())
            .args(&args)
            .env("DATABASE_URL", crate::url(db))
            .env("DATABENTO_API_KEY", key)
            .output()
            .expect("running the backfill")
    }
}

/// One request: 401 without the key, 404 off `timeseries.get_range`, else the range's DBN,
/// cut halfway for the requests (numbered from 0) in `cut`.
async fn answer(
    State(served): State<Arc<Served>>,
    uri: Uri,
    headers: HeaderMap,
    form: String,
) -> Response {
    let n = served.requests.fetch_add(1, Ordering::SeqCst);
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if authorization != Some(served.auth.as_str()) {
        let detail = r#"{"detail":"Authentication failed."}"#;
        return (
            StatusCode::UNAUTHORIZED,
            [(CONTENT_TYPE, "application/json")],
            detail,
        )
            .into_response();
    }
    if !uri.path().contains("/v0/timeseries.get_range") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let dbn = match get_range(&served.feed, &form) {
        Ok(dbn) => dbn,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let length = dbn.len();
    let body = if served.cut.contains(&n) {
        // the announced length, half of it sent, then the connection drops
        let half = Bytes::copy_from_slice(&dbn[..length / 2]);
        let lost = std::io::Error::other("the connection is cut halfway");
        Body::from_stream(futures_util::stream::iter([Ok(half), Err(lost)]))
    } else {
        Body::from(dbn)
    };
    let headers = [
        (CONTENT_TYPE, "application/octet-stream".to_string()),
        (CONTENT_LENGTH, length.to_string()),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// The DBN (zstd) answer of timeseries.get_range for the request's `form`: the feed's trades
/// (as MBP-1 book events with `schema=mbp-1`) or its bars (`schema=ohlcv-1m`) in [start, end).
fn get_range(feed: &Feed, form: &str) -> std::io::Result<Vec<u8>> {
    let field = |name: &str| -> u64 {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (start, end) = (field("start"), field("end"));
    let as_mbp1 = form.split('&').any(|kv| kv == "schema=mbp-1");
    let as_bars = form.split('&').any(|kv| kv == "schema=ohlcv-1m");
    let mut meta = feed.metadata.clone();
    meta.start = start;
    if as_mbp1 {
        meta.schema = Some(Schema::Mbp1);
    }
    let err = |e: dbn::Error| std::io::Error::other(e.to_string());
    let mut dbn = Vec::new();
    let mut encoder = Encoder::with_zstd(&mut dbn, &meta).map_err(err)?;
    let bars = feed
        .bars
        .iter()
        .filter(|b| as_bars && b.hd.ts_event >= start && b.hd.ts_event < end);
    for b in bars {
        encoder.encode_record(b).map_err(err)?;
    }
    // Databento cuts ranges on ts_recv
    let trades = feed
        .trades
        .iter()
        .filter(|t| !as_bars && t.ts_recv >= start && t.ts_recv < end);
    for t in trades {
        if as_mbp1 {
            encoder.encode_record(&mbp1_of(t, b'A')).map_err(err)?;
            encoder.encode_record(&mbp1_of(t, b'T')).map_err(err)?;
        } else {
            encoder.encode_record(t).map_err(err)?;
        }
    }
    encoder.flush().map_err(err)?;
    drop(encoder);
    Ok(dbn)
}

/// The MBP-1 record of a trade's book event (`action` 'T' for the trade itself, 'A' for an
/// add around it): the same trade as the quote feed carries it.
pub fn mbp1_of(t: &TradeMsg, action: u8) -> Mbp1Msg {
    Mbp1Msg {
        hd: RecordHeader::new::<Mbp1Msg>(
            dbn::rtype::MBP_1,
            t.hd.publisher_id,
            t.hd.instrument_id,
            t.hd.ts_event,
        ),
        price: t.price,
        size: t.size,
        action: action as std::ffi::c_char,
        side: t.side,
        flags: t.flags,
        depth: 0,
        ts_recv: t.ts_recv,
        ts_in_delta: 0,
        sequence: t.sequence,
        levels: [BidAskPair::default()],
    }
}

#[cfg(test)]
mod tests {
    use super::basic_auth;

    #[test]
    fn basic_auth_is_the_key_and_an_empty_password_in_standard_base64() {
        // the padded forms: 4, 5 and 6 bytes before encoding
        assert_eq!(basic_auth("key"), "Basic a2V5Og==");
        assert_eq!(basic_auth("abcd"), "Basic YWJjZDo=");
        assert_eq!(basic_auth("abcde"), "Basic YWJjZGU6");
        assert_eq!(
            basic_auth("db-tradebarsTestKey0123456789abc"),
            "Basic ZGItdHJhZGViYXJzVGVzdEtleTAxMjM0NTY3ODlhYmM6"
        );
    }
}
