//! `--rollup` on replay and backfill: `bars_rollup()` on a connection of its own while the
//! load goes on, each time a piece of it commits, so that one piece is rolled up while the
//! next is copied. Every piece counts once by trade identity, so a kill at any moment loses
//! nothing and counts nothing twice: the same command again loads and rolls up the rest.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::error::FeederError;

/// A large file is staged in pieces of about this many trades when it is rolled up while it
/// loads. Smaller pieces start the first rollup sooner and leave less to roll up after the
/// last COPY; each rollup also has a fixed cost, which larger pieces pay less often. The
/// 10M-trade file of `scripts/bench.sh`, from the file to every bar visible (2026-12-07, 2
/// cores, alternating runs): median 9.18 s in pieces of 125,000 (3 runs), 8.82 s of 250,000
/// (9 runs), 9.30 s of 1,000,000 (8 runs).
pub const PIECE_TRADES: u64 = 250_000;

/// What the loads of a command hand their commits to: the rollups running beside them, or
/// nothing (no `--rollup`: the load is staged whole, source by source).
#[derive(Debug, Default, Clone)]
pub struct Pieces {
    commits: Option<Arc<Notify>>,
    size: u64,
    rolled_up: Arc<AtomicI64>,
}

impl Pieces {
    /// The trades a large source is cut into pieces of, if it is rolled up while it loads.
    pub fn size(&self) -> Option<u64> {
        self.commits.as_ref().map(|_| self.size)
    }

    /// Something was committed: roll it up (the rollups take each commit at most once).
    pub fn committed(&self) {
        if let Some(commits) = &self.commits {
            commits.notify_one();
        }
    }

    /// Trades rolled up so far, for progress.
    pub fn rolled_up(&self) -> Option<i64> {
        self.commits
            .as_ref()
            .map(|_| self.rolled_up.load(Ordering::Relaxed))
    }
}

/// What the rollups of one command did, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Rollups that rolled up trades.
    pub rollups: u64,
    pub trades: i64,
    /// Bars written, summed over the rollups: a bar two of them wrote counts twice.
    pub bars: i64,
    pub rejected: i64,
}

/// The rollups running beside a load.
pub struct Roller {
    pieces: Pieces,
    done: CancellationToken,
    task: JoinHandle<(Totals, Result<(), FeederError>)>,
}

impl Roller {
    /// Connects (a connection of its own: the load's is busy copying) and waits for commits;
    /// a large file is cut into pieces of `piece_trades`.
    pub async fn start(database_url: &str, piece_trades: u64) -> Result<Self, FeederError> {
        let client = db::connect(database_url, "tradebars-feeder rollup").await?;
        let pieces = Pieces {
            commits: Some(Arc::new(Notify::new())),
            size: piece_trades,
            rolled_up: Arc::new(AtomicI64::new(0)),
        };
        let done = CancellationToken::new();
        let task = tokio::spawn(roll_up_commits(client, pieces.clone(), done.clone()));
        Ok(Self { pieces, done, task })
    }

    pub fn pieces(&self) -> &Pieces {
        &self.pieces
    }

    /// Once the load has ended: rolls up what its last commits left, and returns the totals,
    /// with the rollup that failed, if one did (what it did not roll up stays staged).
    pub async fn finish(self) -> (Totals, Result<(), FeederError>) {
        self.done.cancel();
        match self.task.await {
            Ok(ended) => ended,
            Err(e) => (
                Totals::default(),
                Err(FeederError::internal("the rollups beside the load", e)),
            ),
        }
    }
}

/// One rollup after each commit (commits that land while one runs are taken by the next),
/// until `done`: a commit before it is still rolled up first. Stops at a failed rollup.
async fn roll_up_commits(
    client: Client,
    pieces: Pieces,
    done: CancellationToken,
) -> (Totals, Result<(), FeederError>) {
    let mut totals = Totals::default();
    let Some(commits) = pieces.commits.clone() else {
        return (totals, Ok(()));
    };
    loop {
        tokio::select! {
            biased;
            _ = commits.notified() => {}
            _ = done.cancelled() => return (totals, Ok(())),
        }
        match rollup_once(&client).await {
            Ok(rolled) => totals.add(rolled),
            Err(e) => return (totals, Err(e)),
        }
        pieces.rolled_up.store(totals.trades, Ordering::Relaxed);
    }
}

impl Totals {
    fn add(&mut self, (trades, bars, rejected): (i64, i64, i64)) {
        if trades + rejected > 0 {
            self.rollups += 1;
        }
        self.trades += trades;
        self.bars += bars;
        self.rejected += rejected;
    }
}

/// `bars_rollup()`: trades rolled up, bars written, trades rejected.
pub async fn rollup_once(client: &Client) -> Result<(i64, i64, i64), FeederError> {
    let row = client
        .query_one("SELECT * FROM bars_rollup()", &[])
        .await
        .map_err(|e| FeederError::db("bars_rollup()", e))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}
