//! One feeder per database: a session advisory lock, with who holds it in feeder_status; a
//! `FeederLock` owns the client whose session holds it.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio_postgres::Client;
use tradebars_contract::lock;

use crate::backoff::Backoff;
use crate::error::FeederError;

/// (class, key) of the feeder lock; the extension's migration_check() counts its holders.
pub const FEEDER_LOCK: (i32, i32) = (lock::CLASS, lock::FEEDER);

/// How often a standby asks for the lock again.
const STANDBY_POLL: Duration = Duration::from_secs(2);

/// The backend pid of this process's session that holds the lock, 0 when none does.
static HOLDER_BACKEND: AtomicI32 = AtomicI32::new(0);

/// Whether this process's lock is still held, as pg_locks on `client` (any session of the
/// same database) sees it: false once the holding session is gone.
pub async fn still_held(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let backend = HOLDER_BACKEND.load(Ordering::Relaxed);
    if backend == 0 {
        return Ok(false);
    }
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = {} \
         AND objid = {} AND objsubid = 2 AND granted AND pid = $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        FEEDER_LOCK.0, FEEDER_LOCK.1
    );
    Ok(client.query_one(&sql, &[&backend]).await?.get(0))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

async fn holder(client: &Client) -> String {
    let row = client
        .query_opt(
            "SELECT pid, host, mode, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS TZ') FROM feeder_status",
            &[],
        )
        .await;
    match row {
        Ok(Some(r)) => format!(
            "pid {} on {} ({}), running since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3)
        ),
        _ => "a process that has not reported itself".into(),
    }
}

/// The feeder lock, held by the session of the client it owns: the client is used through
/// it (Deref), and the lock goes with it.
pub struct FeederLock {
    client: Client,
    /// The backend pid holding the lock, for `HOLDER_BACKEND`.
    backend: i32,
}

impl Deref for FeederLock {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for FeederLock {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl FeederLock {
    /// Gives the lock back before the connection closes, so a feeder started right after
    /// this one exits does not find it still held by a backend that has not noticed the exit
    /// yet.
    pub async fn release(self) {
        self.forget_holder();
        let _ = self
            .client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&FEEDER_LOCK.0, &FEEDER_LOCK.1],
            )
            .await;
    }

    /// This lock no longer counts as held here, unless a newer one of this process took its
    /// place meanwhile (a reconnect acquires the new lock before the old one is dropped).
    fn forget_holder(&self) {
        let _ =
            HOLDER_BACKEND.compare_exchange(self.backend, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Dropped without `release`: the client goes with it, its connection closes and PostgreSQL
/// ends the session, which frees a session advisory lock. No unlock is sent from here: a
/// drop cannot wait for one, one spawned could still be queued behind a statement of a
/// connection that is stuck (the usual reason to drop it), and a dead connection cannot send
/// it at all; the session's end frees the lock in every case.
impl Drop for FeederLock {
    fn drop(&mut self) {
        self.forget_holder();
    }
}

/// Takes the lock on `client`'s session, or fails naming the holder; with `standby`, waits
/// for it instead, asking again every 2 s.
pub async fn acquire(client: Client, mode: &str, standby: bool) -> Result<FeederLock, FeederError> {
    let mut retry = Backoff::new(STANDBY_POLL, STANDBY_POLL);
    let mut waited = false;
    let backend = loop {
        if let Some(backend) = try_lock(&client).await? {
            break backend;
        }
        let who = holder(&client).await;
        if !standby {
            return Err(FeederError::FeederRunning(format!(
                "another tradebars-feeder is feeding this database: {who}; stop it first, or pass --standby to wait for it"
            )));
        }
        if !waited {
            tracing::info!(holder = %who, "standing by: another feeder holds this database");
            waited = true;
        }
        tokio::time::sleep(retry.next_delay()).await;
    };
    HOLDER_BACKEND.store(backend, Ordering::Relaxed);
    let lock = FeederLock { client, backend };
    record_holder(&lock, mode).await?;
    Ok(lock)
}

/// The backend pid when the lock was free and is now this session's; None when held.
async fn try_lock(client: &Client) -> Result<Option<i32>, FeederError> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
            &[&FEEDER_LOCK.0, &FEEDER_LOCK.1],
        )
        .await
        .map_err(|e| FeederError::db("taking the feeder lock", e))?;
    Ok(row.get::<_, bool>(0).then(|| row.get(1)))
}

/// Says who holds the lock, in feeder_status, with its counters started over.
async fn record_holder(client: &Client, mode: &str) -> Result<(), FeederError> {
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    client
        .execute(
            "INSERT INTO feeder_status (id, pid, host, mode, started_at, last_seen)
             VALUES (1, $1, $2, $3, now(), now())
             ON CONFLICT (id) DO UPDATE SET pid = $1, host = $2, mode = $3, started_at = now(),
                 last_seen = now(), trades_received = 0, trades_written = 0, reconnects = 0",
            &[&pid, &host_name(), &mode],
        )
        .await
        .map_err(|e| FeederError::db("recording the feeder in feeder_status", e))?;
    Ok(())
}

/// Counts what this feeder did, for status and migration_check().
pub async fn report(client: &Client, received: i64, written: i64) -> Result<(), FeederError> {
    client
        .execute(
            "UPDATE feeder_status SET last_seen = now(), trades_received = trades_received + $1,
                 trades_written = trades_written + $2",
            &[&received, &written],
        )
        .await
        .map_err(|e| FeederError::db("updating feeder_status", e))?;
    Ok(())
}

/// Records an error where a DBA (and migration_check()) will see it. Best effort.
pub async fn report_error(client: &Client, error: &str) {
    let _ = client
        .execute(
            "UPDATE feeder_status SET errors = errors + 1, last_error = $1, last_error_at = now()",
            &[&error],
        )
        .await;
}
