//! The poll loop most plugins need, and the back-off it uses.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::adapter::{AdapterContext, Command};
use crate::error::AdapterError;
use crate::reading::Reading;

/// Exponential back-off with jitter: `base`, doubling up to `cap`, reset on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            | 1;
        Backoff {
            base,
            cap: cap.max(base),
            next: base,
            seed,
        }
    }

    /// The delay before the next try: between 50 % and 100 % of the current step
    /// (jitter, so that many devices do not retry in lock-step), then double the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        // xorshift64: cheap jitter, no RNG crate needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        step.mul_f64(frac)
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// A device that is read at intervals. [`run_poller`] calls `poll` at start and then
/// every `poll_interval`, marks the device online/offline, backs off on transport errors
/// and hands `/set` writes to `write`.
#[async_trait::async_trait]
pub trait Poller: Send {
    /// Read the device once.
    async fn poll(&mut self, ctx: &AdapterContext) -> Result<Vec<Reading>, AdapterError>;

    /// Called after the readings of a poll have been taken over by the daemon.
    async fn committed(&mut self, _ctx: &AdapterContext) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Write a value from MQTT. The default refuses: nothing here is writable.
    async fn write(
        &mut self,
        ctx: &AdapterContext,
        cmd: Command,
    ) -> Result<Vec<Reading>, AdapterError> {
        Err(AdapterError::Device(format!(
            "point {:?} of device {:?} is not writable",
            cmd.point, ctx.device
        )))
    }
}

/// Run `poller` until the daemon stops. Transport errors mark the device offline and are
/// retried with back-off (from a tenth of the poll interval up to 60 s); device errors
/// are logged and the loop goes on.
pub async fn run_poller<P: Poller + ?Sized>(
    poller: &mut P,
    ctx: &mut AdapterContext,
) -> Result<(), AdapterError> {
    let interval = ctx.poll_interval.max(Duration::from_millis(1));
    let mut backoff = Backoff::new(
        (interval / 10).max(Duration::from_millis(100)),
        Duration::from_secs(60).max(interval),
    );
    let mut ticker = tokio::time::interval_at(Instant::now(), interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A closed command channel only means no more writes; polling goes on.
    let mut commands_open = true;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            cmd = ctx.commands.recv(), if commands_open => {
                let Some(cmd) = cmd else {
                    commands_open = false;
                    continue;
                };
                let point = cmd.point.clone();
                match poller.write(ctx, cmd).await {
                    Ok(readings) => ctx.publish(readings).await?,
                    Err(AdapterError::Cancelled) => return Ok(()),
                    Err(e) => log::warn!(
                        "device {}: write to point {point:?} refused: {e}", ctx.device
                    ),
                }
            }
            _ = ticker.tick() => {
                match poller.poll(ctx).await {
                    Ok(readings) => {
                        backoff.reset();
                        ctx.publish(readings).await?;
                        poller.committed(ctx).await?;
                    }
                    Err(AdapterError::Device(e)) => {
                        log::warn!("device {}: {e}", ctx.device);
                    }
                    Err(AdapterError::Cancelled) => return Ok(()),
                    Err(AdapterError::Transport(e)) => {
                        if ctx.is_online() != Some(false) {
                            log::warn!("device {} offline: {e}", ctx.device);
                        } else {
                            log::debug!("device {} still offline: {e}", ctx.device);
                        }
                        ctx.set_online(false).await?;
                        let delay = backoff.next_delay();
                        if ctx.sleep(delay).await.is_err() {
                            return Ok(());
                        }
                        ticker.reset_immediately();
                    }
                    Err(e @ AdapterError::Fatal(_)) => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[7] >= Duration::from_millis(500) && d[7] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
