//! Limiter memory stays bounded: a million distinct clients grow the keyed
//! rate limiter and the login backoff table, and once their state has run out
//! the periodic upkeep gives the memory back.
//!
//! Live heap is measured with a counting global allocator (the only unsafe
//! code in the project, and only in this test binary). The tests take a lock
//! so that one measurement does not see the other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis::limits::backoff::{AuthGuard, BackoffPolicy};
use portcullis::limits::rate::{KeyedRate, RateSpec};

/// `System`, counting the bytes currently allocated and the high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments
// unchanged; the counters are only bookkeeping on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the allocator counts the whole process.
static SERIAL: Mutex<()> = Mutex::new(());

const CLIENTS: u32 = 1_000_000;

/// Distinct public-looking IPv4 addresses, one per client.
fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i))
}

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resets the high-water mark to the current live bytes and returns them.
fn baseline() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Asserts that what is left above `base` is under 5 % of what the peak added.
fn assert_given_back(what: &str, base: usize, after: usize, elapsed: Duration) {
    let peak = PEAK.load(Ordering::Relaxed);
    let grown = peak.saturating_sub(base);
    let left = after.saturating_sub(base);
    eprintln!(
        "{what}: baseline {base} B, peak +{grown} B ({:.1} MB for {CLIENTS} clients, {:.0} B each), \
         after upkeep +{left} B ({:.3} % of the growth), {elapsed:.2?}",
        grown as f64 / 1e6,
        grown as f64 / f64::from(CLIENTS),
        100.0 * left as f64 / grown.max(1) as f64,
    );
    assert!(
        grown > CLIENTS as usize * 8,
        "{what}: the table never grew ({grown} B)"
    );
    assert!(
        left * 20 < grown,
        "{what}: {left} B of {grown} B still held"
    );
}

#[test]
fn keyed_rate_gives_memory_back_after_a_million_keys() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    // 1000/s with a bucket of one: a key's bucket is full again 1 ms after its
    // last token, and from then on indistinguishable from a new key.
    let rate = KeyedRate::<IpAddr>::new(RateSpec::new(1000, 1).unwrap());
    assert_eq!(rate.check(&client(0)), Ok(()));
    std::thread::sleep(Duration::from_millis(5));
    rate.maintain();
    assert!(rate.is_empty());

    let base = baseline();
    for i in 0..CLIENTS {
        assert_eq!(rate.check(&client(i)), Ok(()));
    }
    assert_eq!(rate.len(), CLIENTS as usize);
    std::thread::sleep(Duration::from_millis(20));
    rate.maintain();
    assert_eq!(rate.len(), 0);
    assert_given_back("KeyedRate<IpAddr>", base, live(), start.elapsed());
}

#[test]
fn auth_guard_gives_memory_back_after_a_million_clients() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let policy = BackoffPolicy::default();
    let window = policy.window;
    let guard = AuthGuard::new(policy);
    let t0 = Instant::now();

    let base = baseline();
    for i in 0..CLIENTS {
        guard.record_failure(client(i), "admin", t0);
    }
    // One IP entry and one IP + user entry per client.
    assert_eq!(guard.len(), 2 * CLIENTS as usize);
    // Within the window everything is kept ...
    guard.cleanup(t0 + window / 2);
    assert_eq!(guard.len(), 2 * CLIENTS as usize);
    // ... and after it nothing is.
    guard.cleanup(t0 + window + Duration::from_secs(1));
    assert!(guard.is_empty());
    assert_given_back("AuthGuard", base, live(), start.elapsed());
}
