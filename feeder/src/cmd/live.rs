//! `tradebars-feeder live`: the command line into the service's spec and options.

use std::time::Duration;

use crate::config::LiveArgs;
use crate::error::FeederError;
use crate::service::{self, ServiceOptions};
use crate::source::live::LiveSpec;
use crate::source::official::OFFICIAL_SCHEMA;

pub async fn run(args: LiveArgs) -> Result<(), FeederError> {
    if args.source.schema == OFFICIAL_SCHEMA {
        return Err(FeederError::Usage(
            "live streams trades; Databento's ohlcv-1m bars are history: load them with backfill --schema ohlcv-1m or replay".into(),
        ));
    }
    let spec = LiveSpec {
        key: args.source.api_key()?,
        symbols: args.source.symbol_list(),
        dataset: args.source.dataset,
        schema: args.source.schema,
        gateway: args.gateway,
        replay_margin: Duration::from_secs(args.replay_margin_secs),
    };
    let opts = ServiceOptions {
        database_url: args.db.database_url,
        batch_size: args.batch_size.max(1),
        batch_interval: Duration::from_millis(args.batch_ms.max(1)),
        rollup_interval: Duration::from_millis(args.rollup_ms),
        final_rollup_limit: Duration::from_secs(args.final_rollup_secs),
        standby: args.standby,
        metrics_addr: args.metrics_addr,
    };
    service::run_live(spec, opts).await
}
