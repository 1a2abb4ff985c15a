//! A background worker: one thread that runs a job whenever it is asked, so
//! the report cycle can ask early, wait a bounded time for a fresh result, and
//! otherwise go on with the last one.
//!
//! Asking while a run is in progress queues one more run with the newest
//! input (older queued inputs are replaced, never piled up). A caller learns
//! whether the result it got answers its own request ([`Answer::fresh`]) and
//! whether the worker was busy when it asked, in which case it should not wait
//! at all: the run in progress is already late.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A job at least this long ran a program or parsed a large answer, and its
/// thread's stack is trimmed after it (`sys::StackTrim`).
const DEEP_JOB: Duration = Duration::from_millis(5);

/// One job's thread and its latest result.
pub struct Worker<I, T> {
    shared: Arc<Shared<I, T>>,
}

struct Shared<I, T> {
    state: Mutex<State<I, T>>,
    cv: Condvar,
}

struct State<I, T> {
    /// Input for the next run, if one was asked for.
    input: Option<I>,
    /// Requests made so far; a request's ticket is this count after it.
    asked: u64,
    /// The ticket the latest finished run served.
    done: u64,
    running: bool,
    latest: Option<Arc<T>>,
    /// How long the latest run took, and when it ended.
    took: Duration,
    finished: Option<Instant>,
    stop: bool,
}

/// A request's handle: what to wait for.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    n: u64,
    /// A run was in progress when this was asked.
    pub behind: bool,
    /// When it was asked.
    pub asked: Instant,
}

/// What a wait produced.
#[derive(Debug)]
pub struct Answer<T> {
    pub latest: Option<Arc<T>>,
    /// `latest` is the run this ticket asked for (or a later one).
    pub fresh: bool,
    /// How long the latest run took.
    pub took: Duration,
    /// How long ago the latest run ended.
    pub age: Duration,
}

impl<I: Send + 'static, T: Send + Sync + 'static> Worker<I, T> {
    /// Starts the thread `name`; it runs `job` once per request.
    pub fn start(
        name: &str,
        mut job: impl FnMut(I) -> T + Send + 'static,
    ) -> std::io::Result<Worker<I, T>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                input: None,
                asked: 0,
                done: 0,
                running: false,
                latest: None,
                took: Duration::ZERO,
                finished: None,
                stop: false,
            }),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(256 * 1024)
            .spawn(move || {
                let stack = crate::sys::StackTrim::this_thread();
                let mut deep = false;
                loop {
                    // Asleep until asked: without the pages the last job
                    // went deep into. Only after a long job (one that ran a
                    // program or parsed a large answer): a quick one stays
                    // shallow, and a trim costs a TLB flush on every CPU.
                    if let Some(t) = stack.as_ref().filter(|_| std::mem::take(&mut deep)) {
                        t.trim();
                    }
                    let (input, ticket) = {
                        let mut st = lock(&s.state);
                        while st.input.is_none() && !st.stop {
                            st = s.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        if st.stop {
                            return;
                        }
                        st.running = true;
                        (st.input.take().expect("checked above"), st.asked)
                    };
                    let started = Instant::now();
                    // A panic (a bug: release builds abort) must not leave
                    // the worker marked busy forever.
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(input)));
                    let mut st = lock(&s.state);
                    match result {
                        Ok(r) => st.latest = Some(Arc::new(r)),
                        Err(_) => log::error!("a worker's job panicked; its last result stands"),
                    }
                    st.took = started.elapsed();
                    deep = st.took >= DEEP_JOB;
                    st.finished = Some(Instant::now());
                    st.done = ticket;
                    st.running = false;
                    s.cv.notify_all();
                }
            })?;
        Ok(Worker { shared })
    }

    /// Asks for a run with `input`.
    pub fn ask(&self, input: I) -> Ticket {
        let mut st = lock(&self.shared.state);
        st.input = Some(input);
        st.asked += 1;
        let behind = st.running;
        self.shared.cv.notify_all();
        Ticket {
            n: st.asked,
            behind,
            asked: Instant::now(),
        }
    }

    /// The newest finished run, waiting until `wait` after the ask for the
    /// one `ticket` asked for (not at all when an earlier run was still
    /// going then: that run's lateness is not waited for twice).
    pub fn latest_within(&self, ticket: Ticket, wait: Duration) -> Option<Arc<T>> {
        let deadline = match ticket.behind {
            true => Instant::now(),
            false => ticket.asked + wait,
        };
        self.wait(ticket, deadline).latest
    }

    /// The latest finished run, without waiting.
    pub fn peek(&self) -> Option<Arc<T>> {
        lock(&self.shared.state).latest.clone()
    }

    /// Drops the latest result: until the next run ends there is none.
    pub fn forget(&self) {
        lock(&self.shared.state).latest = None;
    }

    /// Waits until the run `ticket` asked for has finished or `deadline`
    /// passes, and returns the latest result either way.
    pub fn wait(&self, ticket: Ticket, deadline: Instant) -> Answer<T> {
        let mut st = lock(&self.shared.state);
        loop {
            let now = Instant::now();
            if st.done >= ticket.n || now >= deadline {
                break;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Answer {
            latest: st.latest.clone(),
            fresh: st.done >= ticket.n,
            took: st.took,
            age: st.finished.map_or(Duration::ZERO, |f| f.elapsed()),
        }
    }
}

impl<I, T> Drop for Worker<I, T> {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_all();
    }
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_request_gets_its_own_result() {
        let w = Worker::start("t", |x: u32| x * 2).unwrap();
        let t = w.ask(21);
        let a = w.wait(t, Instant::now() + Duration::from_secs(5));
        assert!(a.fresh);
        assert_eq!(*a.latest.unwrap(), 42);
    }

    #[test]
    fn a_slow_run_gives_the_last_result_at_the_deadline() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let w = Worker::start("t", move |x: u32| {
            if x == 2 {
                gate_rx.recv().ok();
            }
            x
        })
        .unwrap();
        let t = w.ask(1);
        assert!(w.wait(t, Instant::now() + Duration::from_secs(5)).fresh);
        let t = w.ask(2);
        let started = Instant::now();
        let a = w.wait(t, Instant::now() + Duration::from_millis(200));
        assert!(!a.fresh);
        assert_eq!(*a.latest.unwrap(), 1);
        assert!(started.elapsed() < Duration::from_secs(2));
        // Asked while the slow run is in progress: marked behind.
        let t3 = w.ask(3);
        assert!(t3.behind);
        gate_tx.send(()).unwrap();
        let a = w.wait(t3, Instant::now() + Duration::from_secs(5));
        assert!(a.fresh);
        assert_eq!(*a.latest.unwrap(), 3);
    }

    #[test]
    fn a_panicking_run_leaves_the_worker_usable() {
        let w = Worker::start("t", |x: u32| {
            assert!(x != 2, "boom");
            x
        })
        .unwrap();
        let t = w.ask(1);
        assert!(w.wait(t, Instant::now() + Duration::from_secs(5)).fresh);
        let t = w.ask(2);
        let a = w.wait(t, Instant::now() + Duration::from_secs(5));
        assert_eq!(*a.latest.unwrap(), 1, "the last good result stands");
        let t = w.ask(3);
        assert!(!t.behind);
        let a = w.wait(t, Instant::now() + Duration::from_secs(5));
        assert!(a.fresh);
        assert_eq!(*a.latest.unwrap(), 3);
    }

    #[test]
    fn queued_inputs_are_replaced_not_piled_up() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (seen_tx, seen_rx) = mpsc::channel::<u32>();
        let w = Worker::start("t", move |x: u32| {
            if x == 1 {
                gate_rx.recv().ok();
            }
            seen_tx.send(x).ok();
            x
        })
        .unwrap();
        w.ask(1);
        std::thread::sleep(Duration::from_millis(50));
        w.ask(2);
        let last = w.ask(3);
        gate_tx.send(()).unwrap();
        let a = w.wait(last, Instant::now() + Duration::from_secs(5));
        assert_eq!(*a.latest.unwrap(), 3);
        let seen: Vec<u32> = seen_rx.try_iter().collect();
        assert_eq!(seen, [1, 3]);
    }
}
