//! Rate limits on what a client can make the cluster do: sends per user, login attempts per
//! source address and per account, contact requests per user. A limited request gets
//! `rate_limited` with `retry_after_ms`; nothing is stored for it, and nothing already
//! accepted is dropped. Limits are per node (a client spreading over nodes gets each node's
//! allowance).

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chat_types::{ErrorCode, UserId, WireError};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

/// Allowances; each is a sustained rate with a burst of the same size.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Messages one user may send per second (on one node).
    pub sends_per_second: u32,
    /// Login attempts per source address per minute.
    pub logins_per_minute_per_ip: u32,
    /// Login attempts per account per minute.
    pub logins_per_minute_per_account: u32,
    /// Contact requests one user may send per minute.
    pub contact_requests_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            sends_per_second: 200,
            logins_per_minute_per_ip: 300,
            logins_per_minute_per_account: 10,
            contact_requests_per_minute: 30,
        }
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            self.sends_per_second,
            self.logins_per_minute_per_ip,
            self.logins_per_minute_per_account,
            self.contact_requests_per_minute,
        ];
        if all.contains(&0) {
            return Err("rate_limits: every allowance must be at least 1".into());
        }
        Ok(())
    }
}

fn quota(per: Duration, n: u32) -> Quota {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    let every = per / n.get();
    Quota::with_period(every.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(n))
        .allow_burst(n)
}

pub struct RateLimits {
    sends: DefaultKeyedRateLimiter<UserId>,
    logins_ip: DefaultKeyedRateLimiter<IpAddr>,
    logins_account: DefaultKeyedRateLimiter<String>,
    contact_requests: DefaultKeyedRateLimiter<UserId>,
}

fn check<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), WireError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut e = WireError::new(ErrorCode::RateLimited, "too many requests; retry later");
        e.retry_after_ms = Some((wait.as_millis() as u64).max(1));
        e
    })
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Arc<RateLimits> {
        let minute = Duration::from_secs(60);
        let limits = Arc::new(RateLimits {
            sends: governor::RateLimiter::keyed(quota(
                Duration::from_secs(1),
                config.sends_per_second,
            )),
            logins_ip: governor::RateLimiter::keyed(quota(minute, config.logins_per_minute_per_ip)),
            logins_account: governor::RateLimiter::keyed(quota(
                minute,
                config.logins_per_minute_per_account,
            )),
            contact_requests: governor::RateLimiter::keyed(quota(
                minute,
                config.contact_requests_per_minute,
            )),
        });
        // Forget keys whose allowance is full again, so the maps stay small.
        let weak = Arc::downgrade(&limits);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(l) = weak.upgrade() else { return };
                l.sends.retain_recent();
                l.logins_ip.retain_recent();
                l.logins_account.retain_recent();
                l.contact_requests.retain_recent();
            }
        });
        limits
    }

    pub fn send(&self, user: UserId) -> Result<(), WireError> {
        check(&self.sends, &user)
    }

    pub fn login(&self, ip: Option<IpAddr>, username: &str) -> Result<(), WireError> {
        if let Some(ip) = ip {
            check(&self.logins_ip, &ip)?;
        }
        check(&self.logins_account, &username.to_ascii_lowercase())
    }

    pub fn contact_request(&self, user: UserId) -> Result<(), WireError> {
        check(&self.contact_requests, &user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_beyond_the_allowance_is_refused_with_a_wait() {
        let limits = RateLimits::new(&RateLimitConfig {
            sends_per_second: 3,
            ..Default::default()
        });
        for _ in 0..3 {
            limits.send(UserId(1)).expect("within the burst");
        }
        let e = limits.send(UserId(1)).expect_err("beyond the burst");
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000));
        limits
            .send(UserId(2))
            .expect("another user has its own allowance");
    }
}
