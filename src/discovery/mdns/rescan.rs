//! When the mdns-sd daemons rescan the network interfaces. Sans-IO: takes `now` and says which
//! interval to give the daemons; the mDNS actor and the advertiser apply it.
//!
//! A rescan walks every interface (a netlink dump and an ioctl per interface) and wakes the
//! daemon's thread: once a second, as mdns-sd was set to before, it was ~5 % of an idle
//! agent's CPU. The node already hears of address changes as they happen (the swarm's
//! listeners watch netlink and report new and expired addresses), so the daemons rescan every
//! second only for [`RESCAN_BURST`] after such a change, and otherwise every `backstop` (the
//! profile's `mdns_ip_check_interval`), which catches what netlink does not report as an
//! address change (an interface that comes up with the address it already had).

use std::time::Duration;

use tokio::time::Instant;

/// How long the daemons rescan every second after the node's addresses changed: a Wi-Fi
/// join adds its IPv4 and IPv6 addresses within a second or two of each other.
pub const RESCAN_BURST: Duration = Duration::from_secs(3);

/// The interval of a burst: the shortest mdns-sd accepts.
const BURST_SECS: u32 = 1;

/// The rescan schedule of one node (see the module doc).
#[derive(Debug, Clone)]
pub struct Rescan {
    backstop: u32,
    fast_until: Option<Instant>,
}

impl Rescan {
    pub fn new(backstop: Duration) -> Self {
        Self {
            backstop: ip_check_secs(backstop),
            fast_until: None,
        }
    }

    /// The interval the daemons start with, in whole seconds (0: never).
    pub fn interval(&self) -> u32 {
        if self.fast_until.is_some() {
            BURST_SECS
        } else {
            self.backstop
        }
    }

    /// The node's addresses changed at `now`: the interval to give the daemons, if it changes.
    pub fn on_change(&mut self, now: Instant) -> Option<u32> {
        let was = self.interval();
        self.fast_until = Some(now + RESCAN_BURST);
        (self.interval() != was).then_some(BURST_SECS)
    }

    /// When [`Rescan::on_deadline`] has work.
    pub fn deadline(&self) -> Option<Instant> {
        self.fast_until
    }

    /// The burst is over at `now`: the interval to give the daemons, if it changes.
    pub fn on_deadline(&mut self, now: Instant) -> Option<u32> {
        if self.fast_until.is_none_or(|t| now < t) {
            return None;
        }
        self.fast_until = None;
        (self.backstop != BURST_SECS).then_some(self.backstop)
    }
}

/// mdns-sd takes whole seconds; round up so that "every 500 ms" does not become "never".
pub fn ip_check_secs(interval: Duration) -> u32 {
    if interval.is_zero() {
        return 0;
    }
    let secs = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Waits for the next address change on `interfaces` (a counter the node bumps); never
/// returns without one (no receiver, or its sender gone).
pub async fn next_change(interfaces: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    match interfaces {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_rescans_every_second_for_a_burst_then_the_backstop_again() {
        let t0 = Instant::now();
        let mut r = Rescan::new(Duration::from_secs(5));
        assert_eq!(r.interval(), 5);
        assert_eq!(r.deadline(), None);
        assert_eq!(r.on_change(t0), Some(1));
        assert_eq!(r.interval(), 1);
        // A second change extends the burst without a new setting.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(r.on_change(t1), None);
        assert_eq!(r.deadline(), Some(t1 + RESCAN_BURST));
        assert_eq!(r.on_deadline(t0 + RESCAN_BURST), None, "extended");
        assert_eq!(r.on_deadline(t1 + RESCAN_BURST), Some(5));
        assert_eq!(r.interval(), 5);
        assert_eq!(r.deadline(), None);
        assert_eq!(r.on_deadline(t1 + RESCAN_BURST * 2), None);
    }

    #[test]
    fn a_one_second_backstop_never_changes_the_setting() {
        let t0 = Instant::now();
        let mut r = Rescan::new(Duration::from_millis(300));
        assert_eq!(r.interval(), 1, "rounded up");
        assert_eq!(r.on_change(t0), None);
        assert_eq!(r.on_deadline(t0 + RESCAN_BURST), None);
    }
}
