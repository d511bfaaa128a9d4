//! The one way the feeder waits before trying again: from a first delay, doubled after each
//! failure up to a ceiling, for as long as it takes. No jitter: one feeder per database, so no
//! herd of clients to spread out, and the waits stay the same from run to run (and in tests).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    ceiling: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    pub fn new(first: Duration, ceiling: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(ceiling)
            .with_factor(2.0)
            .without_max_times();
        Self {
            builder,
            ceiling,
            delays: builder.build(),
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delays.next().unwrap_or(self.ceiling);
        // backon doubles in f32 seconds (100 ms becomes 200.000003 ms): whole milliseconds
        // are what the delays are given in.
        Duration::from_millis((delay.as_secs_f64() * 1000.0).round() as u64)
    }

    /// After a success: the next wait is the first delay again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_and_start_over_after_a_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(500));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
    }

    #[test]
    fn the_feeders_delays_reach_their_ceilings_exactly() {
        let mut gateway = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..12).map(|_| gateway.next_delay()).collect();
        assert_eq!(delays[8], Duration::from_millis(25_600));
        assert_eq!(delays[9..], [Duration::from_secs(30); 3]);
        let mut fixed = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(
            [fixed.next_delay(), fixed.next_delay()],
            [Duration::from_secs(2); 2]
        );
    }
}
