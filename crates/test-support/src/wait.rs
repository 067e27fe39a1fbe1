//! Polling instead of sleeping: a test waits for an external system (Valkey, the broker, a
//! spawned relay) by checking a condition until it holds, with a deadline that turns a hang
//! into a failure naming what never happened.
//!
//! The deadline uses tokio's clock, so do not combine [`wait_until`] with paused time.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// First pause between two checks; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(5);
const MAX_INTERVAL: Duration = Duration::from_millis(50);
/// How long a check started at or after the deadline may take before it counts as hung.
const LAST_CHECK_GRACE: Duration = Duration::from_secs(1);

/// What a polled condition returns: `true`, `Some(value)` or `Ok(value)` when it holds.
///
/// With a `Result`, the last error is quoted in the timeout panic, which usually says why
/// the condition never held.
pub trait Check {
    /// The value handed back once the condition holds.
    type Output;

    /// `Ok` when the condition holds; otherwise the reason, if there is one.
    fn check(self) -> Result<Self::Output, Option<String>>;
}

impl Check for bool {
    type Output = ();

    fn check(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Check for Option<T> {
    type Output = T;

    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Output = T;

    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Calls `f` until its result holds (see [`Check`]) and returns the value it carries.
///
/// # Panics
/// When `timeout` passes first, with `what` and the last error in the message. A single
/// call of `f` that hangs past the deadline counts as a timeout too.
///
/// ```no_run
/// # async fn example(url: &str) {
/// use std::time::Duration;
/// use agentwire_test_support::wait_until;
/// let len = wait_until(Duration::from_secs(10), "three entries in the history", || async {
///     let len = 3; // e.g. an XLEN against Valkey
///     (len >= 3).then_some(len)
/// })
/// .await;
/// # }
/// ```
pub async fn wait_until<F, Fut, C>(timeout: Duration, what: &str, mut f: F) -> C::Output
where
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
    C: Check,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = FIRST_INTERVAL;
    let mut last_error = None;
    loop {
        // The last check, made after the deadline, still gets a moment to answer: cutting it
        // off at once would report a condition that merely never held as a hung check.
        let answer_by = deadline.max(tokio::time::Instant::now() + LAST_CHECK_GRACE);
        match tokio::time::timeout_at(answer_by, f()).await {
            Ok(outcome) => match outcome.check() {
                Ok(value) => return value,
                Err(error) => last_error = error.or(last_error),
            },
            Err(_) => timed_out(what, timeout, Some("the last check itself hung")),
        }
        if tokio::time::Instant::now() >= deadline {
            timed_out(what, timeout, last_error.as_deref());
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// The blocking form of [`wait_until`], for code outside an async runtime.
///
/// # Panics
/// When `timeout` passes before `f` holds; a call of `f` that hangs is not interrupted.
pub fn wait_until_blocking<F, C>(timeout: Duration, what: &str, mut f: F) -> C::Output
where
    F: FnMut() -> C,
    C: Check,
{
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_INTERVAL;
    let mut last_error = None;
    loop {
        match f().check() {
            Ok(value) => return value,
            Err(error) => last_error = error.or(last_error),
        }
        if Instant::now() >= deadline {
            timed_out(what, timeout, last_error.as_deref());
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

fn timed_out(what: &str, timeout: Duration, last_error: Option<&str>) -> ! {
    match last_error {
        Some(error) => {
            panic!("timed out after {timeout:?} waiting for {what} (last error: {error})")
        }
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let calls = &AtomicU32::new(0);
        let value = wait_until(
            Duration::from_secs(5),
            "the third call",
            move || async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                (n == 3).then_some(n)
            },
        )
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible (last error: still no)")]
    async fn panics_with_what_and_the_last_error() {
        wait_until(Duration::from_millis(30), "the impossible", || async {
            Err::<(), _>("still no")
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "the last check itself hung")]
    async fn a_hanging_check_is_a_timeout() {
        wait_until(Duration::from_millis(30), "a hang", || {
            std::future::pending::<bool>()
        })
        .await;
    }

    #[test]
    fn the_blocking_form_accepts_booleans() {
        let mut calls = 0;
        wait_until_blocking(Duration::from_secs(5), "two calls", || {
            calls += 1;
            calls == 2
        });
        assert_eq!(calls, 2);
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for never")]
    fn the_blocking_form_panics_on_timeout() {
        wait_until_blocking(Duration::from_millis(20), "never", || false);
    }
}
